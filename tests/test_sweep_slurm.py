"""Sweeps dispatched to a real one-node SLURM cluster (tests/slurm_cluster.py; fails, never skips).

1. the smoke sweep through Hydra's multirun with hydra-submitit-launcher;
2. the same through `sweep launch` (returns at once), then a relaunch that submits nothing;
3. a failing cell: the other finishes, status names the error, a relaunch resubmits only it;
4. a job signalled as SLURM does before a time limit requeues itself and resumes, ending like an
   uninterrupted run;
5. a 2-task DDP job (gloo) ends like a 1-task run with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from secret_scan import KEY, leaks
from mixer_scaling.records import read_record
from mixer_scaling.sweep import load

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLI = [sys.executable, "-m", "mixer_scaling.cli"]
NO_WANDB = "wandb.mode=disabled"


def run(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def launch(cluster, runs: Path, *extra: str, timeout: float = 120, wandb: str = NO_WANDB,
           env: dict | None = None) -> subprocess.CompletedProcess:
    proc = run([*CLI, "sweep", "launch", "smoke", f"runs_dir={runs}", wandb, "--executor", "slurm",
                f"hydra.launcher.partition={cluster.partition}", *extra], timeout=timeout, env=env)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc


def status(runs: Path, *extra: str) -> dict[str, dict]:
    proc = run([*CLI, "sweep", "status", "smoke", f"runs_dir={runs}", NO_WANDB, *extra, "--json"])
    assert proc.returncode == 0, proc.stderr
    return {r["run_id"]: r for r in json.loads(proc.stdout)}


def wait_done(cluster, runs: Path, *extra: str, timeout: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = status(runs, *extra)
        if all(r["state"] in ("done", "failed", "lost", "stale") for r in rows.values()) and not cluster.squeue():
            return rows
        time.sleep(2)
    raise TimeoutError(f"sweep not finished after {timeout} s: {status(runs, *extra)}\n{cluster.squeue()}")


def manifest(runs: Path) -> list[dict]:
    path = runs / ".sweeps" / "smoke.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def metrics(run_dir: Path) -> list[dict]:
    """The training rows of a run's metrics.jsonl (evaluation rows left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


def test_hydra_multirun_with_submitit_slurm(idle_slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    proc = run([sys.executable, "-m", "mixer_scaling.train", "-m", "+sweep=smoke", f"runs_dir={runs}", NO_WANDB,
                "hydra/launcher=slurm", "resources=cpu", f"hydra.launcher.partition={idle_slurm_cluster.partition}"],
               timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells = load("smoke", [f"runs_dir={runs}", NO_WANDB], progress=False).cells
    for cell in cells:  # the multirun wrote exactly the cells `sweep launch` would have
        record = read_record(cell.run_dir)
        assert record["status"] == "done" and record["metrics"]["val_top1"] is not None
        assert record["slurm_jobs"][0]["job_id"]
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == sorted(c.run_id for c in cells)


def test_sweep_launch_returns_at_once_and_relaunch_submits_nothing(idle_slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    dry = launch(idle_slurm_cluster, runs, "--dry-run")
    assert dry.returncode == 0 and "dry run: nothing submitted" in dry.stdout
    assert "#SBATCH --array=0-1%2" in dry.stdout and f"#SBATCH --partition={idle_slurm_cluster.partition}" in dry.stdout
    assert "export OMP_NUM_THREADS=1" in dry.stdout and "CPU core-hours" in dry.stdout
    assert not runs.exists() and not idle_slurm_cluster.squeue()

    # A W&B key in the submitting shell reaches the jobs' environment (offline W&B runs), never a file.
    t0 = time.monotonic()
    proc = launch(idle_slurm_cluster, runs, wandb="wandb.mode=auto", env={"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr
    assert "submitted 2 cells as 1 job array(s)" in proc.stdout
    jobs = {e["job_id"] for e in manifest(runs)}
    assert len(jobs) == 2
    queued = {r["id"] for r in idle_slurm_cluster.squeue()}
    assert jobs & queued, "launch waited for the jobs instead of returning"  # still queued or running
    assert time.monotonic() - t0 < 60

    rows = wait_done(idle_slurm_cluster, runs)
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    for row in rows.values():
        assert read_record(runs / row["run_id"])["wandb"]["mode"] == "offline"

    again = launch(idle_slurm_cluster, runs)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout
    assert "skipping 2 done" in again.stdout
    assert len(manifest(runs)) == 2 and not idle_slurm_cluster.squeue()
    # run dirs, W&B's offline files, the manifest, submitit's sbatch scripts, pickles and job logs
    assert list((runs / ".sweeps" / "logs").rglob("*.sh")) and list(runs.rglob("*.wandb"))
    (tmp_path / "printed.txt").write_text(proc.stdout + proc.stderr + again.stdout + again.stderr)
    assert leaks(tmp_path, KEY) == []


def test_failing_cell_is_recorded_and_only_it_is_relaunched(idle_slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    axes = ["model=mixer/micro", "train.lr=0.003,1e6"]  # lr 1e6 diverges: a real failure inside the job
    first_launch = launch(idle_slurm_cluster, runs, *axes, "--max-array-size", "1")
    assert "submitted 2 cells as 2 job array(s)" in first_launch.stdout, first_launch.stdout  # chunked
    rows = wait_done(idle_slurm_cluster, runs, *axes)
    by_lr = {r["train.lr"]: r for r in rows.values()}
    assert by_lr["0.003"]["state"] == "done"
    failed = by_lr["1000000.0"]
    assert failed["state"] == "failed" and "non-finite" in failed["detail"], failed
    record = read_record(Path(failed["run_dir"]))
    assert record["status"] == "failed" and "Traceback" in record["error"]["traceback"]

    first = manifest(runs)
    again = launch(idle_slurm_cluster, runs, *axes)
    assert "submitted 1 cells" in again.stdout, again.stdout
    resubmitted = manifest(runs)[len(first):]
    assert [e["run_id"] for e in resubmitted] == [failed["run_id"]]
    idle_slurm_cluster.wait_idle(timeout=120)


def test_signalled_job_requeues_and_resumes_like_an_uninterrupted_run(idle_slurm_cluster, tmp_path):
    runs, ref = tmp_path / "runs", tmp_path / "ref"
    cell = ["model=mixer/micro", "train.examples_seen=3840", "train.checkpoint_every=10", "train.log_every=2"]
    launch(idle_slurm_cluster, runs, *cell)
    (entry,) = manifest(runs)
    run_dir = runs / entry["run_id"]

    # Wait until it is training, then send what SLURM sends before a time limit (--signal=USR2@...).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= 4:
            break
        time.sleep(0.3)
    else:
        raise TimeoutError(f"the job never started training: {idle_slurm_cluster.squeue()}")
    idle_slurm_cluster.run("scancel", "--signal=USR2", entry["job_id"])

    rows = wait_done(idle_slurm_cluster, runs, *cell, timeout=240)
    record = read_record(run_dir)
    assert rows[entry["run_id"]]["state"] == "done", rows
    # requeued once, then finished: the done record keeps no stale `interrupted_at_step` (issue 16, item 11)
    assert record["attempts"] == 2 and "interrupted_at_step" not in record
    assert [j.get("restart_count", "0") for j in record["slurm_jobs"]] == ["0", "1"]  # requeued, same job
    assert record["train_seconds"] > 0

    # The same cell, never interrupted, one BLAS thread as in the job.
    proc = subprocess.run([sys.executable, "-m", "mixer_scaling.train", "+sweep=smoke", f"runs_dir={ref}", NO_WANDB,
                           *cell], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = read_record(ref / entry["run_id"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train/img_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics(run_dir)) == strip(metrics(ref / entry["run_id"]))
    assert record["metrics"] == reference["metrics"]


def test_two_task_ddp_job_matches_one_task(idle_slurm_cluster, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cell = ["model=mixer/micro", "train.examples_seen=1280"]
    launch(idle_slurm_cluster, one, *cell)
    launch(idle_slurm_cluster, two, *cell, "hydra.launcher.tasks_per_node=2")  # 2 ranks x 1 core, gloo
    (a,) = wait_done(idle_slurm_cluster, one, *cell).values()
    (b,) = wait_done(idle_slurm_cluster, two, *cell).values()
    assert a["run_id"] == b["run_id"] and a["state"] == b["state"] == "done", (a, b)
    ra, rb = read_record(Path(a["run_dir"])), read_record(Path(b["run_dir"]))
    assert (ra["world_size"], rb["world_size"]) == (1, 2)
    assert rb["slurm_jobs"][0]["ntasks"] == "2"
    ma, mb = metrics(Path(a["run_dir"])), metrics(Path(b["run_dir"]))
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for x, y in zip(ma, mb):  # the same global batch: the same losses up to float reduction order
        assert y["train/loss"] == pytest.approx(x["train/loss"], rel=1e-4, abs=1e-6)
        assert y["train/lr"] == pytest.approx(x["train/lr"], rel=1e-9)
    val = 64  # the report half of smoke's data.val_size=128: one example is 1/64
    assert abs(ra["metrics"]["val_top1"] - rb["metrics"]["val_top1"]) <= 1 / val + 1e-9


def test_bad_partition_and_array_limit(idle_slurm_cluster, tmp_path, monkeypatch):
    from mixer_scaling.launch import slurm_max_array_size

    assert slurm_max_array_size() == idle_slurm_cluster.max_array_size  # read from the cluster's config
    runs = tmp_path / "runs"
    proc = run([*CLI, "sweep", "launch", "smoke", f"runs_dir={runs}", "--executor", "slurm",
                "hydra.launcher.partition=nosuch"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "hydra.launcher.partition='nosuch': nosuch does not exist" in lines[0], lines[0]
    assert f"partitions: {idle_slurm_cluster.partition}" in lines[0]
    assert not runs.exists() and not idle_slurm_cluster.squeue()

    # sbatch refusing the request (checked with --test-only first): its reason, in one line, nothing queued
    for bad, reason in [("+hydra.launcher.additional_parameters.no-such-option=1", "unrecognized option"),
                        ("hydra.launcher.cpus_per_task=64", "node configuration is not available")]:
        proc = run([*CLI, "sweep", "launch", "smoke", f"runs_dir={runs}", "--executor", "slurm",
                    f"hydra.launcher.partition={idle_slurm_cluster.partition}", bad])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "sbatch refuses the cpu array of 2 cells" in lines[0] and reason in lines[0], lines[0]
        assert not idle_slurm_cluster.squeue() and manifest(runs) == []
