"""Synthetic-data generation rate over tiny-model training consumption (goal: >= 10x).

    .venv/bin/python benchmarks/bench_data.py

Both are measured in the same process, interleaved (A/B/A/B...), and the medians compared, so the ratio
holds on a loaded machine too. Training consumption = images per second of a full training step
(forward, backward, AdamW) of each family's tiny model at batch 128, 32x32, float32 on the CPU.
"""

from __future__ import annotations

import statistics
import time

import torch

from mixer_scaling.config import compose
from mixer_scaling.data import build_data
from mixer_scaling.models import build_model

BATCH, REPEATS = 128, 5


def generation_rate(ds, batch_no: int) -> float:
    idx = list(range(batch_no * BATCH, (batch_no + 1) * BATCH))
    t0 = time.perf_counter()
    ds.__getitems__(idx)
    return BATCH / (time.perf_counter() - t0)


def training_rate(model, opt, x, y) -> float:
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return BATCH / (time.perf_counter() - t0)


def rates(repeats: int = REPEATS) -> dict[str, tuple[float, float]]:
    """model → (median generation img/s, median training img/s), measured interleaved."""
    data = build_data(compose([]).data)
    x, y = data.train.__getitems__(list(range(BATCH)))
    out = {}
    for name in ("mixer/tiny", "vit/tiny", "bit/tiny"):
        torch.manual_seed(0)
        model = build_model({"name": name}, data.num_classes, data.image_size)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        training_rate(model, opt, x, y)  # warm-up
        generation_rate(data.train, 1)
        gen, tr = [], []
        for i in range(repeats):
            gen.append(generation_rate(data.train, 2 + i))
            tr.append(training_rate(model, opt, x, y))
        out[name] = (statistics.median(gen), statistics.median(tr))
    return out


def run(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run.py: one per tiny model, the ratio against the goal >= 10."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import row, set_threads

    threads = set_threads()
    return [row("7 data generation / training", f"{name} @32 b{BATCH}: generated / trained img/s", g / t, ">= 10", "x",
                f"generate {g:.0f} img/s (1 thread, in the training process), train {t:.0f} img/s "
                f"(fp32 CPU x{threads}), median of {3 if quick else REPEATS}")
            for name, (g, t) in rates(3 if quick else REPEATS).items()]


def main() -> None:
    print(f"{'model':<12}{'generate img/s':>16}{'train img/s':>14}{'ratio':>8}  goal >= 10")
    for name, (g, t) in rates().items():
        print(f"{name:<12}{g:>16.0f}{t:>14.0f}{g / t:>8.1f}  {'met' if g / t >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
