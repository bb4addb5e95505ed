"""7a. Process start to first training step of a tiny run (goal <= 5 s).

    .venv/bin/python benchmarks/bench_startup.py [--quick]

Times ``python -m mixer_scaling.train model=mixer/tiny train.log_every=1 wandb.mode=disabled`` into a
fresh temporary runs_dir, from the spawn of the process until the first line of the run's
``metrics.jsonl`` appears (the engine writes it right after step 1: forward, backward, AdamW step),
then stops the run (SIGTERM: it checkpoints and exits). Several runs, the median kept. Also times
``python -c "import mixer_scaling.train"`` (what the interpreter spends importing before the app
starts), so the note says how much of the wait is imports.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bench_threads, failed_rows, median, print_rows, row  # noqa: E402

BENCH = "7 start to first step"
GOAL_S = 5.0
TIMEOUT_S = 120


def _env() -> dict:
    threads = str(bench_threads())
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}


def first_step_seconds(runs: Path, importtime: Path | None = None) -> float:
    """Spawn a tiny run; seconds until its first metrics line. The run is stopped after that.
    ``importtime``: run it with ``python -X importtime``, its report written to that file."""
    flags = ["-X", "importtime"] if importtime else []
    cmd = [sys.executable, *flags, "-m", "mixer_scaling.train", "model=mixer/tiny", "train.log_every=1",
           "train.examples_seen=6400", "wandb.mode=disabled", f"runs_dir={runs}", "progress=false"]
    t0 = time.perf_counter()
    err = open(importtime, "w") if importtime else subprocess.PIPE
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        while True:
            hits = [p for p in runs.glob("*/metrics.jsonl") if p.stat().st_size > 0]
            if hits:
                return time.perf_counter() - t0
            if proc.poll() is not None:
                text = proc.stderr.read() if proc.stderr else Path(importtime).read_text()
                raise RuntimeError(f"the run exited ({proc.returncode}) before its first step: {text.strip()[-300:]}")
            if time.perf_counter() - t0 > TIMEOUT_S:
                raise TimeoutError(f"no training step logged after {TIMEOUT_S} s")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the run checkpoints at the next step boundary and exits
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if importtime:
            err.close()


TOP = ("torch", "timm", "sklearn", "hydra", "wandb", "submitit", "pandas", "matplotlib")


def import_breakdown(report: Path) -> tuple[float, dict[str, float]]:
    """Seconds spent importing before the first step (``-X importtime``: the top-level imports' cumulative
    times), and the packages that weigh most (each with what it imports: timm includes torchvision)."""
    total, per = 0.0, {}
    for line in report.read_text().splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        try:
            us = int(cumulative)
        except ValueError:  # the header
            continue
        if name.startswith(" ") and not name.startswith("  "):  # top level: one space after the bar
            total += us / 1e6
        if name.strip() in TOP:  # a package's own line (wherever it was first imported from), with its imports
            per[name.strip()] = max(per.get(name.strip(), 0.0), us / 1e6)
    return total, dict(sorted(per.items(), key=lambda kv: -kv[1]))


def run(quick: bool = False) -> list[dict]:
    metric = "python -m mixer_scaling.train (mixer/tiny) → first step, s"
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        first_step_seconds(work / "warm")  # warm the file cache (a first-ever start also compiles .pyc)
        times = [first_step_seconds(work / f"runs{i}") for i in range(2 if quick else 3)]
        first_step_seconds(work / "runs-importtime", importtime=work / "importtime.txt")
        imports, per = import_breakdown(work / "importtime.txt")
    except Exception as exc:
        return failed_rows(BENCH, [(metric, f"<= {GOAL_S:g}", "s")], f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t = median(times)
    biggest = ", ".join(f"{k} {v:.1f}" for k, v in list(per.items())[:4] if v >= 0.05)
    note = (f"median of {len(times)} ({', '.join(f'{x:.1f}' for x in times)}); imports before the first step "
            f"~{imports:.1f} s ({biggest}; -X importtime, which adds a little), the rest is interpreter start, "
            f"config, data and few-shot sets, model, the step")
    return [row(BENCH, metric, t, f"<= {GOAL_S:g}", "s", note)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print_rows(run(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
