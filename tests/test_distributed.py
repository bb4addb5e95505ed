"""Data-parallel training: two real CPU ranks (gloo), started as torchrun would start them, train like one process.

Each rank is ``python -m mixer_scaling.train`` with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set;
the single-process run is the same command without them. Same config, same global batch.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY

from mixer_scaling import records
from mixer_scaling.records import MetricsLog, read_record

pytestmark = pytest.mark.slow

# Every step logged: a signal then always stops on a logged step. (One that stops between logging steps
# leaves the resumed run's first loss window shorter than the uninterrupted run's, on one process too.)
# fp32: the comparisons below are to float tolerance. Upstream validation every 4 steps (early stopping):
# both ranks validate their half of the selection set, and checkpoint right after.
OVERRIDES = [*TINY, "train.log_every=1", "train.precision=fp32", "train.eval_every_examples=256"]


def _start(runs_dir: Path, world_size: int) -> list[subprocess.Popen]:
    # One thread per rank: the ranks (and the 2 cores) are shared. No SLURM variables: the launch is ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    if world_size > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return [subprocess.Popen([sys.executable, "-m", "mixer_scaling.train", *OVERRIDES, f"runs_dir={runs_dir}"], cwd=ROOT,
                             env={**env, **({"RANK": str(r), "LOCAL_RANK": str(r)} if world_size > 1 else {})},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for r in range(world_size)]


def _wait(procs: list[subprocess.Popen], timeout: float = 180) -> list[tuple[int, str]]:
    """(exit code, output) of each process; those not done in time are killed (exit code -9)."""
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            out = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0]
        except subprocess.TimeoutExpired:
            p.kill()
            out = p.communicate()[0]
        results.append((p.returncode, out))
    return results


def _run_dir(runs_dir: Path) -> Path:
    (run_dir,) = runs_dir.iterdir()
    return run_dir


def _curve(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["train/loss"], r["train/grad_norm"], r["train/lr"])
            for r in MetricsLog(run_dir).read() if "train/loss" in r]


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny run on 1 process and on 2 ranks (started together, so they overlap), uninterrupted."""
    root = tmp_path_factory.mktemp("dp")
    procs = {n: _start(root / f"ws{n}", n) for n in (1, 2)}
    results = {n: _wait(ps) for n, ps in procs.items()}
    for n, rank_results in results.items():
        for rc, out in rank_results:
            assert rc == 0, f"world size {n}:\n{out}"
    return {n: _run_dir(root / f"ws{n}") for n in (1, 2)}


def test_two_ranks_train_like_one_process(runs):
    one, two = read_record(runs[1]), read_record(runs[2])
    assert one["status"] == two["status"] == "done"
    assert one["run_id"] == two["run_id"]
    assert (one["world_size"], one["num_devices"]) == (1, 1) and (two["world_size"], two["num_devices"]) == (2, 2)
    assert two["device_hours"] == pytest.approx(two["train_seconds"] * 2 / 3600)

    # The same rows (rank 0 alone logs), the same losses and gradient norms: DDP's average of the
    # gradients of the two half batches is the full batch's gradient.
    one_curve, two_curve = _curve(runs[1]), _curve(runs[2])
    assert [r[0] for r in two_curve] == [r[0] for r in one_curve] == list(range(1, 17))
    for i, key in enumerate(("train/loss", "train/grad_norm", "train/lr"), start=1):
        assert [r[i] for r in two_curve] == pytest.approx([r[i] for r in one_curve], rel=1e-4), key
    # atol: Adam turns the float noise of gradients that are ~0 (the token-mixing fc2 biases) into
    # updates, here up to 3e-5; a wrong gradient moves the weights by ~lr (3e-3) per step.
    a, b = _weights(runs[1]), _weights(runs[2])
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4) for k in a)

    m1, m2 = one["metrics"], two["metrics"]
    assert [p["step"] for p in two["upstream_curve"]] == [p["step"] for p in one["upstream_curve"]] == [4, 8, 12, 16]
    assert [p["select_top1"] for p in two["upstream_curve"]] == \
        pytest.approx([p["select_top1"] for p in one["upstream_curve"]], abs=1 / 128)  # one of 128 images
    assert m2["val_top1"] == pytest.approx(m1["val_top1"], abs=1 / 128)  # within one of the 128 reported images
    assert m2["fewshot"].keys() == m1["fewshot"].keys()
    for name, per_k in m1["fewshot"].items():
        # about one test image of the smallest few-shot set (digits: 797)
        assert m2["fewshot"][name] == pytest.approx(per_k, abs=1.5e-3), name


def test_a_stop_signal_to_both_ranks_checkpoints_and_the_rerun_resumes(runs, tmp_path):
    runs_dir = tmp_path / "cut"
    ranks = _start(runs_dir, 2)
    deadline = time.monotonic() + 120
    while not list(runs_dir.glob(f"*/{records.METRICS_FILE}")):  # written from the first logged step on
        if time.monotonic() > deadline or any(p.poll() is not None for p in ranks):
            pytest.fail(f"no training step logged: {_wait(ranks, timeout=5)}")
        time.sleep(0.02)
    for p in ranks:  # as SLURM signals every task of a preempted job
        p.send_signal(signal.SIGTERM)
    results = _wait(ranks)
    run_dir = _run_dir(runs_dir)
    cut = read_record(run_dir)
    assert cut["status"] == "interrupted"
    assert torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["step"] == cut["interrupted_at_step"]
    for rc, out in results:  # both ranks stopped after the same step
        assert rc == 75 and f"stopped by signal SIGTERM at step {cut['interrupted_at_step']};" in out, out

    for rc, out in _wait(_start(runs_dir, 2)):
        assert rc == 0, out
    resumed, clean = read_record(run_dir), read_record(runs[2])
    assert resumed["status"] == "done" and resumed["attempts"] == 2
    assert _curve(run_dir) == _curve(runs[2])
    assert resumed["metrics"] == clean["metrics"]
    a, b = _weights(run_dir), _weights(runs[2])
    assert all(torch.equal(a[k], b[k]) for k in a)
