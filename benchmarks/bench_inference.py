"""3. Inference throughput of Mixer, ViT and BiT at matched sizes, the paper's way: images per second,
batch size swept, the best batch size kept.

    .venv/bin/python benchmarks/bench_inference.py [--quick] [--device cpu|cuda]

Mixer-B/16 vs ViT-B/16 vs BiT-R50x1 at 224 (our registry builders, 1000-class heads, random weights,
built as a run builds them on the device: on the CPU with timm's fused attention off),
``torch.inference_mode``, in the precision a run evaluates in on the device (``train.precision=auto``:
bf16 autocast where the device has native bf16, else fp32; every row says which). For each batch
size the three models are timed interleaved (warm-up, then A/B/C rounds, median per model), so the ratios Mixer/ViT
and Mixer/BiT compare like with like on a machine whose load drifts. The paper (Table 3, TPU-v3,
img/s/core): Mixer-B/16 1384, ViT-B/16 861, BiT-R50x1 2159, i.e. Mixer/ViT 1.61 and Mixer/BiT 0.64.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ROOT, autocast, built_as_runs, device_cli, interleave, median, on_devices, row,  # noqa: E402
                    run_precision, where)

BENCH = "3 inference throughput"
MODELS = {"mixer": "mixer/b16", "vit": "vit/b16", "bit": "bit/r50x1"}
PAPER_NAMES = {"mixer": "Mixer-B/16", "vit": "ViT-B/16", "bit": "BiT-R50x1"}
BATCHES = {"cpu": (1, 8, 32), "cuda": (32, 128, 512)}


def paper_throughput() -> dict[str, float]:
    """img/s/core of the three models in the paper's Table 3 (our reference copy)."""
    path = ROOT / "src" / "mixer_scaling" / "reference" / "paper_table3.csv"
    out: dict[str, float] = {}
    with open(path) as f:
        for rec in csv.DictReader(f):
            for key, name in PAPER_NAMES.items():
                if rec["model"] == name and int(rec["image_size"]) == 224 and key not in out:
                    out[key] = float(rec["throughput_img_per_sec_per_core"])
    return out


def build(name: str, image_size: int, device):
    """The model as a run builds it on ``device`` (on the CPU: timm's fused attention off)."""
    from mixer_scaling.models import build_model

    with built_as_runs(device):
        return build_model({"name": name}, num_classes=1000, image_size=image_size).to(device).eval()


def forward_fn(model, x, device, prec: str):
    """One forward pass in the resolved precision ``prec``, as a run's throughput evaluation does it."""
    import torch

    context = autocast(device, prec)

    def fwd():
        with torch.inference_mode(), context:
            model(x)

    return fwd


def sweep(models: dict, image_size: int, batches, device, repeats: int, warmup: int = 1) -> dict[str, dict[int, float]]:
    """img/s per model per batch size: the models interleaved at each batch size."""
    import torch

    prec = run_precision(device)
    per_batch: dict[str, dict[int, float]] = {k: {} for k in models}
    for bs in batches:
        x = torch.randn(bs, 3, image_size, image_size, device=device)
        try:
            times = interleave({k: forward_fn(m, x, device, prec) for k, m in models.items()}, repeats, warmup,
                               device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        for k, ts in times.items():
            per_batch[k][bs] = bs / median(ts)
    return per_batch


def measure(device, quick: bool) -> list[dict]:
    models = {k: build(n, 224, device) for k, n in MODELS.items()}
    batches = BATCHES[device.type][:2] if quick else BATCHES[device.type]
    per_batch = sweep(models, 224, batches, device, repeats=2 if quick else 5)
    best = {k: max(v.values()) for k, v in per_batch.items()}
    best_bs = {k: max(v, key=v.get) for k, v in per_batch.items()}
    paper = paper_throughput()
    on = where(device, run_precision(device))
    rows = []
    for k, name in MODELS.items():
        sweep_txt = ", ".join(f"b{bs}: {v:.1f}" for bs, v in per_batch[k].items())
        rows.append(row(BENCH, f"{name}@224 img/s ({on})", best[k], "", "img/s",
                        f"best batch {best_bs[k]} of {sweep_txt}; paper {paper.get(k, float('nan')):.0f}/core"))
    for other in ("vit", "bit"):
        ref = paper["mixer"] / paper[other]
        rows.append(row(BENCH, f"{MODELS['mixer']} / {MODELS[other]} ({on})", best["mixer"] / best[other],
                        f"~{ref:.2f} (paper)", "x",
                        f"paper: {paper['mixer']:.0f} / {paper[other]:.0f} img/s/core on TPU-v3"))
    return rows


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    return on_devices(measure, quick, device)


def main(argv: list[str] | None = None) -> int:
    return device_cli(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
