"""Synthetic-data generation rate over tiny-model training consumption (goal: >= 10x).

    .venv/bin/python benchmarks/bench_data.py

Both are measured in the same process, interleaved (A/B/A/B...), and the medians compared, so the ratio
holds on a loaded machine too. Training consumption = images per second of a full training step of
each family's tiny model at batch 128, 32x32 (the ``cpu`` recipe), as a run does it on the CPU: the
model built from the composed config with timm's fused attention off, the run's step
(:func:`common.train_step_fn`) in the run's precision (``train.precision=auto``: bf16 autocast on a
CPU with native bf16, else fp32; the rows say which).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import built_as_runs, row, run_precision, set_threads, train_step_fn, where  # noqa: E402

import torch  # noqa: E402

from mixer_scaling.config import compose  # noqa: E402
from mixer_scaling.data import build_data  # noqa: E402
from mixer_scaling.models import build_model  # noqa: E402

BATCH, REPEATS = 128, 5


def generation_rate(ds, batch_no: int) -> float:
    idx = list(range(batch_no * BATCH, (batch_no + 1) * BATCH))
    t0 = time.perf_counter()
    ds.__getitems__(idx)
    return BATCH / (time.perf_counter() - t0)


def training_rate(step) -> float:
    t0 = time.perf_counter()
    step()
    return BATCH / (time.perf_counter() - t0)


def rates(repeats: int = REPEATS) -> dict[str, tuple[float, float]]:
    """model → (median generation img/s, median training img/s), measured interleaved."""
    cpu = torch.device("cpu")
    prec = run_precision(cpu)
    data = build_data(compose([]).data)
    x, y = data.train.__getitems__(list(range(BATCH)))
    out = {}
    for name in ("mixer/tiny", "vit/tiny", "bit/tiny"):
        cfg = compose([f"model={name}", f"train.batch_size={BATCH}"])
        torch.manual_seed(0)
        with built_as_runs(cpu):
            model = build_model(cfg.model, data.num_classes, data.image_size)
        step = train_step_fn(model, cfg.train, x, y, cpu, prec)
        for _ in range(2):  # warm-up: optimizer state, oneDNN primitives
            training_rate(step)
        generation_rate(data.train, 1)
        gen, tr = [], []
        for i in range(repeats):
            gen.append(generation_rate(data.train, 2 + i))
            tr.append(training_rate(step))
        out[name] = (statistics.median(gen), statistics.median(tr))
    return out


def run(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run.py: one per tiny model, the ratio against the goal >= 10."""
    set_threads()
    on = where(torch.device("cpu"), run_precision(torch.device("cpu")))
    return [row("7 data generation / training", f"{name} @32 b{BATCH}: generated / trained img/s", g / t, ">= 10", "x",
                f"generate {g:.0f} img/s (1 thread, in the training process), train {t:.0f} img/s "
                f"({on}), median of {3 if quick else REPEATS}")
            for name, (g, t) in rates(3 if quick else REPEATS).items()]


def main() -> None:
    set_threads()
    print(f"training in {where(torch.device('cpu'), run_precision(torch.device('cpu')))}")
    print(f"{'model':<12}{'generate img/s':>16}{'train img/s':>14}{'ratio':>8}  goal >= 10")
    for name, (g, t) in rates().items():
        print(f"{name:<12}{g:>16.0f}{t:>14.0f}{g / t:>8.1f}  {'met' if g / t >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
