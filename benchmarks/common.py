"""What every benchmark shares: the row format, timing (warm-up, interleaved repeats, medians), the
thread count, the machine's matmul peak, the precision and model building of runs, and a description
of the machine.

A benchmark module exposes ``run(quick: bool = False) -> list[dict]``; each row is
``{benchmark, metric, value, goal, unit, met, note}`` (:func:`row`). ``goal`` is text such as
``">= 1.10"`` or ``"<= 10"`` (empty: reported, no goal), ``met`` is True/False (None without a goal or a
value). Benchmarks measure; they never raise for a missed goal, and a benchmark that cannot run here
returns its rows with ``value=None`` and the reason in ``note``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT / "src") not in sys.path:  # runnable from a checkout without the editable install too
    sys.path.insert(0, str(ROOT / "src"))

FIELDS = ("benchmark", "metric", "value", "goal", "unit", "met", "note")


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def row(benchmark: str, metric: str, value: float | None, goal: str = "", unit: str = "", note: str = "") -> dict:
    """One result. ``goal`` is ``">= x"`` or ``"<= x"`` (or ``""``); ``met`` follows from it."""
    return {"benchmark": benchmark, "metric": metric, "value": None if value is None else float(value),
            "goal": goal, "unit": unit, "met": goal_met(value, goal), "note": note}


def parse_goal(goal: str) -> tuple[str, float] | None:
    goal = (goal or "").strip()
    for op in (">=", "<="):
        if goal.startswith(op):
            return op, float(goal[len(op):].split()[0])
    return None


def goal_met(value: float | None, goal: str) -> bool | None:
    parsed = parse_goal(goal)
    if parsed is None or value is None:
        return None
    op, target = parsed
    return value >= target if op == ">=" else value <= target


def failed_rows(benchmark: str, metrics: Iterable[tuple[str, str, str]], why: str) -> list[dict]:
    """Rows for a benchmark that could not run: ``metrics`` = (metric, goal, unit)."""
    return [row(benchmark, m, None, goal, unit, note=why) for m, goal, unit in metrics]


# ---------------------------------------------------------------------------------------------
# Threads, timing
# ---------------------------------------------------------------------------------------------


def bench_threads() -> int:
    """Threads every benchmark uses: ``BENCH_THREADS``, else the cores this process may run on."""
    env = os.environ.get("BENCH_THREADS")
    if env:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads() -> int:
    import torch

    n = bench_threads()
    torch.set_num_threads(n)
    return n


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device=None) -> float:
    """Wall seconds of one call (synchronising a CUDA device before and after)."""
    if device is not None:
        sync(device)
    t0 = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - t0


def interleave(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device=None,
               on_step: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each function, A/B/C/A/B/C...: ``warmup`` untimed rounds, then ``repeats``
    timed ones (the order rotates every round, so no function always follows the same one). Ratios of
    the medians then hold on a machine whose load drifts."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            timed(fns[name], device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(fns[name], device))
        if on_step:
            on_step()
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def matmul_fn(device=None, dtype=None, n: int = 2048) -> tuple[Callable[[], object], float]:
    """(a function doing one n×n by n×n torch.mm, its FLOPs): the machine's matmul peak, timed by the
    caller interleaved with what it is compared to."""
    import torch

    device = device or torch.device("cpu")
    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n ** 3


# ---------------------------------------------------------------------------------------------
# What runs do: precision, model building
# ---------------------------------------------------------------------------------------------


def run_precision(device) -> str:
    """``bf16`` or ``fp32``: what a run computes in on ``device`` with every recipe's default
    ``train.precision=auto`` (:func:`mixer_scaling.precision.resolve`)."""
    from mixer_scaling import precision

    return precision.resolve("auto", device)


def autocast(device, prec: str):
    """The autocast context a run uses for the resolved precision ``prec`` on ``device``."""
    from mixer_scaling import precision

    return precision.autocast(device, prec)


def where(device, prec: str) -> str:
    """How a row says what it measured on: ``bf16 CPU x2``, ``fp32 CPU x2``, ``bf16 NVIDIA H100 ...``."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"{prec} {torch.cuda.get_device_name(device)}"
    return f"{prec} CPU x{torch.get_num_threads()}"


def built_as_runs(device):
    """Build models inside this as ``train.run`` does on ``device`` (:func:`mixer_scaling.precision.cpu_attention`)."""
    import torch

    from mixer_scaling.precision import cpu_attention

    return cpu_attention(torch.device(device) if isinstance(device, str) else device)


def train_step_fn(model, t, x, y, device, prec: str) -> Callable[[], None]:
    """One training step of ``model`` on the batch ``(x, y)`` as a run's loop (``engine.Loop.run``)
    does it for the ``train`` config ``t``: the run's optimizer (``engine.build_optimizer``: timm's,
    with the recipe's betas, learning rate and weight decay), cross-entropy with the recipe's label
    smoothing, forward and loss under the autocast of ``prec``, backward, clipping at ``t.grad_clip``,
    the optimizer step. Left out: the per-step learning-rate update and loss bookkeeping (the same in
    any precision) and mixup (off in the CPU recipes). Call it once before timing (the optimizer
    allocates its state in the first step)."""
    import math

    import torch

    from mixer_scaling.engine import build_optimizer

    opt = build_optimizer(model, t)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(t.label_smoothing))
    context = autocast(device, prec)
    clip = float(t.grad_clip or math.inf)
    model.train()

    def step() -> None:
        with context:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    return step


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector extensions that decide float32/bf16 matmul speed (AVX-512, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
                return " ".join(keep)
    except OSError:
        pass
    return ""


def machine_info() -> dict:
    import torch

    info = {
        "date": _dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "threads": bench_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = "missing"
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["git"] = ""
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def print_rows(rows: list[dict]) -> None:
    """A plain table, for running one benchmark module alone."""
    for r in rows:
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        met = {True: "met", False: "MISSED", None: ""}[r["met"]]
        print(f"{r['benchmark']:<28} {r['metric']:<44} {value:>10} {r['unit']:<9} {r['goal']:<9} {met:<6} {r['note']}")


def on_devices(measure: Callable, quick: bool = False, device: str | None = None) -> list[dict]:
    """``measure(device, quick)`` rows on the CPU, and on CUDA when one is at hand (or on ``device`` alone)."""
    import torch

    set_threads()
    devices = [device] if device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [r for dev in devices for r in measure(torch.device(dev), quick)]


def device_cli(doc: str, run: Callable, argv: list[str] | None = None) -> int:
    """The command line of a benchmark module that runs per device: ``[--quick] [--device DEV]``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    print_rows(run(args.quick, args.device))
    return 0
