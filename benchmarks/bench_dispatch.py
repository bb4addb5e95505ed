"""5. Dispatch: ``mixer-scaling sweep launch`` of a 1000-cell grid to a local SLURM cluster (goal <= 10 s),
and the relaunch once every cell is done (goal <= 5 s, nothing submitted).

    .venv/bin/python benchmarks/bench_dispatch.py [--cells 1000]

The grid is the ``smoke`` sweep (2 models) × ``seed=range(0, cells/2)`` into a temporary runs_dir.
Both timings are the real command line as a user runs it (a fresh process: interpreter start and
imports included): expand, compose and validate every cell, check the cluster (partition,
MaxArraySize, ``sbatch --test-only``), submit the job array(s), write the launch manifest. The jobs
are submitted held (``+hydra.launcher.additional_parameters.hold=true`` → ``#SBATCH --hold``), so
nothing trains here; they are cancelled right after. Then every cell gets a ``done`` record
(``records.Record``, not timed) and the same command is timed again: it must submit nothing (checked
in its output, the manifest and the queue).

Cluster: the one ``SLURM_CONF`` points at if it answers; otherwise a throwaway one-node cluster is
started for the benchmark (``scripts/slurm/start.sh``, installing SLURM with ``install.sh`` when
missing, as the tests do) and stopped at the end. A real cluster is never used unless SLURM_CONF
names it explicitly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, failed_rows, median, print_rows, row  # noqa: E402

BENCH = "5 dispatch (SLURM)"
SCRIPTS = ROOT / "scripts" / "slurm"
GOAL_LAUNCH, GOAL_RELAUNCH = 10.0, 5.0
LEAKY = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SUBMITIT_")


def _env(conf: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
    if conf:
        env["SLURM_CONF"] = conf
    env.update(WANDB_MODE="disabled", COLUMNS="200")
    return env


def _slurm(cmd: list[str], env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def cluster():
    """Yields (environment with SLURM_CONF, partition); starts and stops a throwaway cluster if needed."""
    conf = os.environ.get("SLURM_CONF")
    if conf and shutil.which("scontrol"):
        env = _env(conf)
        ping = _slurm(["scontrol", "ping"], env)
        if ping.returncode == 0 and "UP" in ping.stdout:
            parts = _slurm(["sinfo", "-h", "-o", "%P"], env).stdout.split()
            default = next((p.rstrip("*") for p in parts if p.endswith("*")), parts[0] if parts else "debug")
            yield env, default, f"existing cluster (SLURM_CONF={conf})"
            return
    if not all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        proc = subprocess.run(["bash", str(SCRIPTS / "install.sh")], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError("no SLURM here and scripts/slurm/install.sh failed: "
                               f"{(proc.stderr or proc.stdout)[-300:]}")
    state = Path(tempfile.mkdtemp(prefix="msbench-", dir="/tmp"))  # short: munge's socket path has a limit
    env = _env(None)
    try:
        proc = subprocess.run(["bash", str(SCRIPTS / "start.sh"), str(state)], env=env, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/slurm/start.sh failed: {(proc.stderr or proc.stdout)[-400:]}")
        values = {}
        for line in (state / "env").read_text().splitlines():
            if line.startswith("export "):
                k, _, v = line[len("export "):].partition("=")
                values[k] = v
        yield _env(values["SLURM_CONF"]), values["SLURM_TEST_PARTITION"], "throwaway cluster (scripts/slurm/start.sh)"
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh"), str(state)], capture_output=True, timeout=180)
        shutil.rmtree(state, ignore_errors=True)


def _launch(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mixer_scaling.cli", "sweep", "launch", "smoke", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, proc


def _manifest(runs: Path) -> list[dict]:
    path = runs / ".sweeps" / "smoke.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _queued(env: dict, job_ids: set[str]) -> int:
    out = _slurm(["squeue", "-h", "-r", "-o", "%i"], env).stdout.split()
    return sum(1 for j in out if j in job_ids or j.split("_")[0] in job_ids)


def _cancel(env: dict, array_ids: set[str], timeout: float = 60) -> None:
    if array_ids:
        _slurm(["scancel", *sorted(array_ids)], env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _queued(env, array_ids):
        time.sleep(0.3)


def _mark_done(overrides: list[str]) -> int:
    """A valid ``done`` record for every cell of the grid (what finished jobs would leave behind)."""
    from mixer_scaling.records import DONE, MetricsLog, Record
    from mixer_scaling.score import requested
    from mixer_scaling.sweep import load

    sweep = load("smoke", overrides, progress=False)
    for cell in sweep.cells:
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = cell.config
        steps = cfg["train"]["examples_seen"] // cfg["train"]["batch_size"]
        evaluation = requested(cfg)  # scored as the config asks, or the relaunch would submit scoring jobs
        fewshot = {name: {str(k): 0.1 for k in s["shots"]} for name, s in evaluation["fewshot"].items()}
        Record(cell.run_dir, {
            "run_id": cell.run_id, "run_dir": str(cell.run_dir), "study": cfg.get("study"), "config": cfg,
            "model": cfg["model"]["name"], "seed": cfg["seed"], "steps": steps, "attempts": 1,
            "evaluation": evaluation, "metrics": {"val_top1": 0.01, "fewshot": fewshot},
        }).save(DONE)
        log = MetricsLog(cell.run_dir)  # as a finished run leaves it: one line per logging step
        for step in range(cfg["train"]["log_every"] or steps, steps + 1, cfg["train"]["log_every"] or steps):
            log.append({"step": step, "examples": step * cfg["train"]["batch_size"], "train/loss": 4.6})
    return len(sweep.cells)


def _import_seconds(env: dict) -> float:
    """What the launch command spends importing before it can compose a cell (torch, timm, Hydra...)."""
    code = ("import time; t = time.perf_counter(); import mixer_scaling.sweep_cli; "
            "from mixer_scaling.config import compose, validate; validate(compose([])); "
            "print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def run(quick: bool = False, cells: int = 1000) -> list[dict]:
    metrics = [(f"launch {cells} cells (held), s", f"<= {GOAL_LAUNCH:g}", "s"),
               (f"relaunch {cells} done cells, s", f"<= {GOAL_RELAUNCH:g}", "s")]
    repeats = 1 if quick else 3
    work = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    try:
        with cluster() as (env, partition, which):
            launcher = [f"hydra.launcher.partition={partition}", "+hydra.launcher.additional_parameters.hold=true"]
            t_launch, held, left = [], [], 0
            for r in range(repeats):  # each launch into a fresh runs_dir: 1000 new cells every time
                runs = work / f"runs{r}"
                overrides = [f"seed=range(0,{cells // 2})", f"runs_dir={runs}", "wandb.mode=disabled"]
                seconds, proc = _launch([*overrides, "--executor", "slurm", *launcher], env)
                entries = _manifest(runs)
                arrays = {e["job_id"].split("_")[0] for e in entries}
                held.append(_queued(env, arrays))
                _cancel(env, arrays)
                left += _queued(env, arrays)
                if proc.returncode != 0 or len(entries) != cells:
                    why = f"launch failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-300:]}"
                    return failed_rows(BENCH, metrics, why)
                t_launch.append(seconds)
            imports = _import_seconds(env)
            n_done = _mark_done(overrides)  # the last grid: every cell done
            t_relaunch, problems = [], []
            for _ in range(repeats):
                seconds, again = _launch([*overrides, "--executor", "slurm", *launcher], env)
                t_relaunch.append(seconds)
                submitted = len(_manifest(runs)) - len(entries)
                queued_now = len(_slurm(["squeue", "-h", "-r", "-o", "%i"], env).stdout.split())
                if again.returncode != 0 or "nothing to submit" not in again.stdout or submitted or queued_now:
                    problems.append(f"exit {again.returncode}, submitted {submitted}, {queued_now} queued: "
                                    f"{again.stdout.strip()[-150:]}")
            spread = lambda ts: ", ".join(f"{t:.1f}" for t in ts)  # noqa: E731
            note_launch = (f"median of {repeats} ({spread(t_launch)}); {cells} cells in {len(arrays)} held array(s), "
                           f"{min(held)}-{max(held)} tasks queued, cancelled ({left} left); {which}; of it "
                           f"{imports:.1f} s interpreter start + imports (torch, timm) before the first cell")
            note_relaunch = (f"median of {repeats} ({spread(t_relaunch)}); {n_done} done records, each relaunch "
                             f"printed 'nothing to submit', added nothing to the manifest, left the queue empty")
            rows = [row(BENCH, metrics[0][0], median(t_launch), metrics[0][1], "s", note_launch),
                    row(BENCH, metrics[1][0], median(t_relaunch), metrics[1][1], "s", note_relaunch)]
            if problems:
                rows[1]["met"] = False
                rows[1]["note"] = "SUBMITTED AGAIN or failed: " + "; ".join(problems)
            return rows
    except Exception as exc:  # a benchmark reports, it does not fail the run
        return failed_rows(BENCH, metrics, f"{type(exc).__name__}: {str(exc)[:300]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="one launch and one relaunch instead of three of each")
    args = p.parse_args(argv)
    print_rows(run(args.quick, args.cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
