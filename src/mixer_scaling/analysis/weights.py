"""Token-mixing weights as pictures (paper Fig. 5): ``mixer-scaling weights <run>``.

Each hidden unit of a token-mixing MLP's first layer has one weight per input patch; reshaped to the
patch grid it shows which spatial pattern the unit responds to. As in the paper, units are shown in
pairs — each next to the unit whose weights are most nearly its negative — and ordered from global
(low spatial frequency) to local, on one symmetric colour scale shared by every block shown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..records import CHECKPOINT_FILE, RESULT_FILE

FC1 = "blocks.{}.mlp_tokens.fc1.weight"


def find_run(run: str, runs_dir: str | Path = "runs") -> Path:
    """A run directory from its path or its run id under ``runs_dir``."""
    for candidate in (Path(run), Path(runs_dir) / run):
        if (candidate / RESULT_FILE).exists() or (candidate / CHECKPOINT_FILE).exists():
            return candidate
    raise UserError(f"run {run!r} not found: expected a run directory or a run id under {runs_dir}/")


def token_mixing_weights(run_dir: Path) -> tuple[dict[int, np.ndarray], int]:
    """``{block: W1 (units x tokens)}`` of a Mixer run's checkpoint, and the token grid's side."""
    record = json.loads((run_dir / RESULT_FILE).read_text()) if (run_dir / RESULT_FILE).exists() else {}
    family = record.get("family") or (record.get("config") or {}).get("model", {}).get("family")
    if family and family != "mixer":
        raise UserError(f"run {run_dir.name} is a {family} model; token-mixing weights exist only for Mixer")
    if not (run_dir / CHECKPOINT_FILE).exists():
        raise UserError(f"run {run_dir.name} has no {CHECKPOINT_FILE} to read weights from")
    from .. import checkpoint

    state = checkpoint.reported_weights(run_dir, record)[0]  # early stopping: the best step's weights
    blocks = {}
    b = 0
    while FC1.format(b) in state:
        w = state[FC1.format(b)].float().numpy()
        blocks[b] = w[0] if w.ndim == 3 else w  # untied token mixing: the first channel group
        b += 1
    if not blocks:
        raise UserError(f"run {run_dir.name}: its checkpoint has no token-mixing weights ({FC1.format(0)})")
    tokens = blocks[0].shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise UserError(f"run {run_dir.name}: {tokens} tokens do not form a square patch grid")
    if int(record.get("finetune_factor") or 1) > 1:
        raise UserError(f"run {run_dir.name} is a higher-resolution fine-tune (part-major token order); "
                        "draw its parent's weights instead")
    return blocks, side


def pair_units(w: np.ndarray) -> list[int]:
    """Unit order: opposite-sign pairs (greedy on correlation), pairs sorted from global to local."""
    z = w - w.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    corr = z @ z.T
    free = set(range(len(w)))
    pairs = []
    for u in np.argsort(-np.linalg.norm(w, axis=1)):  # strongest units choose first
        if u not in free:
            continue
        free.discard(u)
        partner = min(free, key=lambda v: corr[u, v]) if free else None
        if partner is not None:
            free.discard(partner)
        pairs.append([int(u)] + ([int(partner)] if partner is not None else []))
    return [u for pair in sorted(pairs, key=lambda p: _frequency(w[p[0]])) for u in pair]


def _frequency(unit: np.ndarray) -> float:
    """Mean spatial frequency of a unit's weight map (power-weighted radius of its 2-D spectrum)."""
    side = math.isqrt(unit.size)
    power = np.abs(np.fft.fft2(unit.reshape(side, side) - unit.mean())) ** 2
    f = np.fft.fftfreq(side)
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    return float((power * radius).sum() / (power.sum() + 1e-12))


def render_weights(run_dir: Path, out_dir: Path, blocks: Sequence[int] | None = None,
                   max_units: int = 64) -> list[Path]:
    """One figure (PNG + PDF) with a panel per block: its first ``max_units`` units, paired and sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights, side = token_mixing_weights(run_dir)
    chosen = list(blocks) if blocks is not None else sorted(weights)[:3]
    bad = [b for b in chosen if b not in weights]
    if bad:
        raise UserError(f"--blocks {','.join(map(str, bad))}: the model has blocks 0..{max(weights)}")
    if max_units < 2:
        raise UserError(f"--units={max_units} is not allowed; expected an integer >= 2")
    shown = {b: weights[b][pair_units(weights[b])][:max_units] for b in chosen}
    vmax = max(float(np.abs(w).max()) for w in shown.values())  # one symmetric scale for every block
    cols = min(16, max(len(w) for w in shown.values()))
    rows = {b: math.ceil(len(w) / cols) for b, w in shown.items()}
    fig = plt.figure(figsize=(cols * 0.55, sum(rows.values()) * 0.55 + 0.45 * len(chosen)))
    grid = fig.add_gridspec(sum(rows.values()) + len(chosen), cols, hspace=0.15, wspace=0.08)
    r = 0
    for b in chosen:
        title = fig.add_subplot(grid[r, :])
        title.axis("off")
        title.text(0, 0.2, f"block {b}: first token-mixing layer, {weights[b].shape[0]} units "
                   f"({len(shown[b])} shown), {side}x{side} patch grid", fontsize=8)
        r += 1
        for i, unit in enumerate(shown[b]):
            ax = fig.add_subplot(grid[r + i // cols, i % cols])
            ax.imshow(unit.reshape(side, side), cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        r += rows[b]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        path = out_dir / f"token_mixing_{run_dir.name}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp.{ext}")  # atomic: a reader never sees half a figure
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(path)
        files.append(path)
    plt.close(fig)
    return files


def cmd_weights(args) -> int:
    run_dir = find_run(args.run, args.runs_dir)
    try:
        blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else None
    except ValueError:
        raise UserError(f"--blocks={args.blocks!r} is not allowed; expected block indices like 0,1,2") from None
    for f in render_weights(run_dir, Path(args.output), blocks, args.units):
        print(f)
    return 0


def register(subparsers) -> None:
    w = subparsers.add_parser("weights", help="pictures of a Mixer run's token-mixing weights (paper Fig. 5)")
    w.add_argument("run", help="a run directory, or a run id under --runs-dir")
    w.add_argument("--runs-dir", default="runs")
    w.add_argument("-o", "--output", default="figures/weights", help="folder for the PNG and PDF")
    w.add_argument("--blocks", help="comma-separated block indices (default: the first three)")
    w.add_argument("--units", type=int, default=64, help="units shown per block (default 64)")
    w.set_defaults(fn=cmd_weights)
