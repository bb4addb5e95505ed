"""8. Training step in bf16 autocast against fp32 on the CPU, for the CPU-sized models.

    .venv/bin/python benchmarks/bench_precision.py [--quick]

Every recipe runs with ``train.precision=auto``, which on a CPU with native bf16 (AMX or AVX512-BF16)
is bf16 autocast (:mod:`mixer_scaling.precision`). This measures whether that pays on the CPU: the
training step of every CPU-sized model (Mixer, ViT and BiT, ``micro`` and ``tiny``) at 32 px (the
``cpu`` recipe's resolution) and at 16 px (the demo's and the CPU study's), batch 64, in fp32 and in
bf16, timed interleaved (fp32/bf16, bf16/fp32, ... after warm-up) and the medians compared, so the
ratio holds on a machine whose load drifts. Each timed call runs as many steps as take ~0.2 s, so
that the ratio of the smallest models is not timer noise.

Everything is built as a run builds it: the config composed from ``conf/`` (``model=<name>
data.image_size=<px> train.batch_size=64``, the ``cpu`` recipe otherwise), the model by
:func:`mixer_scaling.models.build_model` from it, with timm's fused attention switched off as
``train.run`` does on the CPU, a batch of the embedded data set, and the step as the run's loop does
it (:func:`common.train_step_fn`: the run's optimizer, loss, autocast, clipping). The fp32 and the
bf16 model start from the same weights, each with its own optimizer.

Rows: per model and size, bf16 img/s over fp32 img/s (goal >= 1.0: bf16 is not slower, since the CPU
recipe uses it through ``auto``), both img/s in the note; then the smallest of these ratios, which
states the goal "bf16 >= 1.0x fp32 for every family" in one row. On a CPU without native bf16 (where
``auto`` is fp32) the rows are measured all the same, without a goal, and say so.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (built_as_runs, interleave, median, print_rows, row, run_precision,  # noqa: E402
                    set_threads, train_step_fn)

BENCH = "8 train step: bf16/fp32 (CPU)"
MODELS = ("mixer/micro", "mixer/tiny", "vit/micro", "vit/tiny", "bit/micro", "bit/tiny")
SIZES = (32, 16)
BATCH = 64
GOAL = ">= 1.0"
CALL_S = 0.2  # seconds of steps per timed call


def compose_case(name: str, image_size: int, batch: int):
    from mixer_scaling.config import compose

    return compose([f"model={name}", f"data.image_size={image_size}", f"train.batch_size={batch}"])


def measure(name: str, image_size: int, batch: int, data, repeats: int, warmup: int) -> dict:
    """fp32 and bf16 seconds per step (medians of interleaved calls) of one model at one size."""
    import time

    import torch

    from mixer_scaling.models import build_model

    cpu = torch.device("cpu")
    cfg = compose_case(name, image_size, batch)
    torch.manual_seed(int(cfg.seed))
    with built_as_runs(cpu):
        model32 = build_model(cfg.model, num_classes=data.num_classes, image_size=data.image_size)
    model16 = copy.deepcopy(model32)
    x, y = data.train.__getitems__(list(range(batch)))
    steps = {"fp32": train_step_fn(model32, cfg.train, x, y, cpu, "fp32"),
             "bf16": train_step_fn(model16, cfg.train, x, y, cpu, "bf16")}
    for step in steps.values():  # optimizer state, oneDNN primitives, allocator
        for _ in range(warmup):
            step()
    t0 = time.perf_counter()
    steps["fp32"]()
    k = max(1, round(CALL_S / (time.perf_counter() - t0)))

    def calls(step):
        def call():
            for _ in range(k):
                step()
        return call

    times = interleave({p: calls(s) for p, s in steps.items()}, repeats=repeats, warmup=0)
    return {"model": name, "image_size": image_size, "batch": batch, "steps_per_call": k, "repeats": repeats,
            **{f"{p}_s_per_step": median(ts) / k for p, ts in times.items()},
            **{f"{p}_spread": max(ts) / min(ts) for p, ts in times.items()}}


def run(quick: bool = False) -> list[dict]:
    import torch

    from mixer_scaling.config import compose
    from mixer_scaling.data import build_data

    threads = set_threads()
    native = run_precision(torch.device("cpu")) == "bf16"
    goal = GOAL if native else ""
    caveat = "" if native else "; this CPU has no native bf16: runs use fp32 here (auto)"
    repeats, warmup = (3, 1) if quick else (9, 3)
    models = MODELS[::2] if quick else MODELS
    rows, ratios = [], {}
    for size in SIZES:
        data = build_data(compose([f"data.image_size={size}"]).data)  # the embedded data set at this size
        for name in models:
            m = measure(name, size, BATCH, data, repeats, warmup)
            img32, img16 = BATCH / m["fp32_s_per_step"], BATCH / m["bf16_s_per_step"]
            case = f"{name}@{size} b{BATCH}"
            ratios[case] = img16 / img32
            r = row(BENCH, f"{case}: bf16 / fp32 img/s (CPU x{threads})", img16 / img32, goal, "x",
                    f"bf16 {img16:.0f} img/s, fp32 {img32:.0f} img/s (median of {repeats} calls of "
                    f"{m['steps_per_call']} step{'s' if m['steps_per_call'] > 1 else ''}, max/min bf16 {m['bf16_spread']:.2f}, fp32 {m['fp32_spread']:.2f})"
                    f"{caveat}")
            r["extra"] = {**m, "fp32_img_per_s": img32, "bf16_img_per_s": img16, "threads": threads}
            rows.append(r)
    worst = min(ratios, key=ratios.get)
    families = sorted({c.split("/")[0] for c in ratios})
    per_family = ", ".join(f"{f} {min(v for c, v in ratios.items() if c.startswith(f + '/')):.2f}" for f in families)
    rows.append(row(BENCH, f"every family ({', '.join(families)}; {len(ratios)} cases): smallest bf16 / fp32",
                    ratios[worst], goal, "x",
                    f"bf16 >= 1.0x fp32 for every family, as the CPU recipe uses bf16 (train.precision=auto); "
                    f"smallest {worst}; per family: {per_family}{caveat}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and one size per family (development)")
    args = p.parse_args(argv)
    print_rows(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
