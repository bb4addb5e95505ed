"""A training job cancelled with ``scancel`` on the real SLURM test cluster (tests/slurm_cluster.py), with the
real W&B client logging offline: its log ends in one line, not a traceback, its record says interrupted with
a checkpoint, and its W&B run is finished for ``wandb sync``.

``scancel`` signals every process of the job: the training process, and W&B's service process too, which
exits at once without finishing its run. Without care, the job's log ends with submitit's traceback of the
stop and W&B's atexit traceback (``ConnectionResetError``), and the run's W&B offline folder holds nothing
``wandb sync`` can read.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from mixer_scaling import checkpoint, records
from mixer_scaling.records import read_record

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLI = [sys.executable, "-m", "mixer_scaling.cli"]
# The smallest SLURM cell: long enough (1000 steps) that the cancel lands mid-training.
CELL = ["model=mixer/micro", "train.examples_seen=64000", "train.log_every=2", "train.checkpoint_every=1000",
        "wandb.mode=offline"]


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in records.MetricsLog(run_dir).read() if "train/loss" in r]


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-<id>.wandb``: a header, then LevelDB-log blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, block, head = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", data[:head]
    out, pos, chunks = [], head, b""
    while pos + head <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + head])
        if left < head or (kind == 0 and length == 0):  # the block's zero padding
            pos += left
            continue
        chunks += data[pos + head:pos + head + length]
        pos += head + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunks)
            out.append(rec)
            chunks = b""
    return out


def test_scancelled_job_log_has_no_traceback_and_wandb_run_is_finished(idle_slurm_cluster, tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.run([*CLI, "sweep", "launch", "smoke", f"runs_dir={runs}", *CELL, "--executor", "slurm",
                           f"hydra.launcher.partition={idle_slurm_cluster.partition}"],
                          cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "submitted 1 cells" in proc.stdout, proc.stdout + proc.stderr
    (entry,) = [json.loads(line) for line in (runs / ".sweeps" / "smoke.jsonl").read_text().splitlines()]
    run_dir = runs / entry["run_id"]

    # Training, with W&B's service running beside it: then cancel, as a user (or a preempting scheduler) does.
    deadline = time.monotonic() + 90
    while not ((run_dir / records.METRICS_FILE).exists() and len(train_rows(run_dir)) >= 2):
        assert time.monotonic() < deadline, f"the job never started training: {idle_slurm_cluster.squeue()}"
        time.sleep(0.2)
    idle_slurm_cluster.run("scancel", entry["job_id"])
    idle_slurm_cluster.wait_idle(timeout=60)

    # The job's log (submitit's *_log.out / *_log.err): no traceback, the run's own one line at its end.
    logs = sorted(p for p in (runs / ".sweeps" / "logs").rglob("*_log.*"))
    assert logs, list((runs / ".sweeps").rglob("*"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "Traceback" not in text, text[-4000:]
    ours = [line for line in text.splitlines() if "mixer_scaling" in line]
    assert "interrupted: stopped by signal SIGTERM at step" in ours[-1] and "checkpoint saved" in ours[-1], text

    # The record: interrupted, with the checkpoint of the step it stopped at.
    record = read_record(run_dir)
    assert record["status"] == "interrupted", record
    stopped = record["interrupted_at_step"]
    assert 2 <= stopped < record["steps"]
    assert checkpoint.load_latest(run_dir / records.CHECKPOINT_FILE, tidy=False).state["step"] == stopped

    # W&B: one offline run, finished (its exit record), holding every row the attempt logged.
    (log_file,) = (run_dir / "wandb").glob(f"offline-run-*-{entry['run_id']}*/run-{entry['run_id']}.wandb")
    kinds = [r.WhichOneof("record_type") for r in wandb_records(log_file)]
    assert kinds.count("run") == 1 and kinds[-1] == "exit", kinds
    assert [r.exit.exit_code for r in wandb_records(log_file) if r.HasField("exit")] == [0]
    steps = {r["step"] for r in records.MetricsLog(run_dir).read()}  # W&B keeps one history row per step
    assert kinds.count("history") == len(steps) >= len(train_rows(run_dir)) >= 2, (kinds, steps)
