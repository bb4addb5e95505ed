"""One writer per run directory: two processes on one run, on one fine-tune, two launches of one sweep.

Every writer here is a real process (the console entry points, started with subprocess). A writer is held
mid-training by the test gate (``gate/sitecustomize.py``: it stops at a chosen logged step until a file
appears), so "the other process starts while this one trains" is arranged, not hoped for: no sleeps.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from fault_helpers import QUICK, losses, reference
from mixer_scaling import checkpoint, locks, records
from mixer_scaling.config import compose, validate
from mixer_scaling.errors import ConfigError
from mixer_scaling.records import read_record, run_id_of

GATE_DIR = Path(__file__).parent / "gate"
TRAIN_STEPS = list(range(2, 17, 2))  # QUICK: 16 steps, a line every 2
KILLED = "ended without closing its record"


class Proc:
    """One real process: ``python -m <module> <args>`` in ``cwd``, stdout and stderr to files."""

    def __init__(self, module: str, args: list[str], cwd: Path, name: str, gate: Path | None = None,
                 gate_step: int = 2, env: dict | None = None):
        self.out, self.err = cwd / f"{name}.out", cwd / f"{name}.err"
        full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full["PYTHONPATH"] = os.pathsep.join([str(GATE_DIR), *filter(None, [full.get("PYTHONPATH")])])
        full.pop("MIXER_TEST_GATE", None)
        if gate is not None:
            full.update(MIXER_TEST_GATE=str(gate), MIXER_TEST_GATE_STEP=str(gate_step))
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=full, stdout=out,
                                         stderr=err)
        self.pid = self.proc.pid

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"pid {self.pid} still running after {timeout} s:\n{self.output()[-3000:]}")

    def done(self) -> bool:
        return self.proc.poll() is not None

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def stderr_lines(self) -> list[str]:
        return [l for l in self.err.read_text(errors="replace").splitlines() if l.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(condition, procs: list[Proc], what: str, timeout: float = 300, allowed_to_end=()) -> None:
    """Until ``condition()``; fail at once if a process not in ``allowed_to_end`` ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs:
            if p.done() and p not in allowed_to_end:
                raise AssertionError(f"pid {p.pid} exited ({p.proc.returncode}) before {what}:\n{p.output()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        time.sleep(0.02)


def reached(gate: Path) -> list[Path]:
    return sorted(gate.parent.glob(f"{gate.name}.reached.*"))


def holder_pid(gate: Path) -> int:
    [path] = reached(gate)
    return int(path.name.rsplit(".", 1)[1])


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:  # a failed test leaves no process behind
        p.kill()


def refusal_pattern(run_id: str, pid: int) -> str:
    return (rf"error: run {run_id} is being trained by pid {pid} on host {re.escape(socket.gethostname())} "
            rf"since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d; not starting a second writer \(wait_for_lock=true waits\)")


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in records.MetricsLog(run_dir).read() if "train/loss" in r]


# ---------------------------------------------------------------------------------------------
# The lock itself
# ---------------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from mixer_scaling import locks
lock = locks.acquire(Path(sys.argv[1]))
Path(sys.argv[2]).write_text("held")
time.sleep(600)
"""


def test_lockf_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path, procs):
    path, ready = tmp_path / ".lock", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        info = locks.holder(path)  # asks the kernel (F_GETLK), takes nothing
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname() and info["started_at"]
        with pytest.raises(locks.Busy) as busy:
            locks.acquire(path)
        assert busy.value.holder["pid"] == holder.pid
        # It is a POSIX record lock: a plain lockf from any other process conflicts with it.
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(OSError) as raw:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            assert raw.value.errno in (errno.EACCES, errno.EAGAIN)
        finally:
            os.close(fd)
        assert locks.holder(path)["pid"] == holder.pid  # probing twice left it held
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert locks.holder(path) is None  # the kernel released it with the process: no stale lock
    with locks.acquire(path) as mine:
        # (Not path.read_text() here: closing any descriptor of the file would drop this process's lock.)
        assert mine.info["pid"] == os.getpid()
        assert locks.holder(path) is None  # held by this process, not by another
        with pytest.raises(locks.Busy):  # POSIX locks never conflict within a process: refused by the registry
            locks.acquire(path)
        probe = subprocess.run([sys.executable, "-c", "import sys; from mixer_scaling import locks; "
                                "print(locks.holder(sys.argv[1])['pid'])", str(path)], capture_output=True, text=True)
        assert probe.stdout.strip() == str(os.getpid()), probe.stderr  # still held after this process probed it
    assert locks.holder(path) is None
    assert json.loads(path.read_text())["pid"] == os.getpid()  # who held it last, as written into it


def test_wait_for_lock_is_a_checked_option_outside_the_run_id():
    assert run_id_of(compose(["wait_for_lock=true"])) == run_id_of(compose([]))
    validate(compose(["wait_for_lock=true"]))
    with pytest.raises(ConfigError, match=r"^wait_for_lock='maybe' is not allowed; expected true or false"):
        validate(compose(["wait_for_lock=maybe"]))


def test_a_held_run_is_not_marked_failed_nor_tidied_by_another_process(tmp_path):
    """record_failure (a failed cell) and the temp-file tidying leave a run alone while another live process
    holds it."""
    cfg = compose([*TINY, f"runs_dir={tmp_path / 'runs'}"])
    run_dir = tmp_path / "runs" / run_id_of(cfg)
    run_dir.mkdir(parents=True)
    records.atomic_write_json(run_dir / records.RESULT_FILE, {"status": "running"})
    in_flight = run_dir / f".{records.CHECKPOINT_FILE}.abc123.tmp"
    in_flight.write_bytes(b"x" * 1000)
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir / locks.LOCK_FILE), str(ready)])
    try:
        while not ready.exists():
            assert holder.poll() is None
            time.sleep(0.01)
        records.record_failure(cfg, RuntimeError("a second process failed"))
        assert read_record(run_dir) == {"status": "running"}
        assert checkpoint.remove_partial_writes(run_dir / records.CHECKPOINT_FILE) == []
        assert checkpoint.load_latest(run_dir / records.CHECKPOINT_FILE).problems == []
        assert in_flight.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Its holder dead, the temp file is a dead writer's leftover: removed and said so.
    [line] = checkpoint.remove_partial_writes(run_dir / records.CHECKPOINT_FILE)
    assert "abc123" in line and not in_flight.exists()


LAUNCH_LOCK = """
import os, sys, time
from pathlib import Path
from mixer_scaling import launch
from mixer_scaling.sweep import load
out = Path(sys.argv[2])
def put(suffix, text):  # renamed into place: the test, polling for the file, never reads it half-written
    tmp = out.with_suffix(suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out.with_suffix(suffix))
sweep = load("smoke", [f"runs_dir={sys.argv[1]}"], progress=False)
with launch.launch_lock(sweep, on_wait=lambda line: put(".waiting", line)):
    put(".holding", "holding")
    while sys.argv[3] != "-" and not Path(sys.argv[3]).exists():
        time.sleep(0.01)
"""


def test_a_second_launch_waits_for_the_first_to_decide_and_submit(tmp_path):
    runs, release = tmp_path / "runs", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", LAUNCH_LOCK, str(runs), str(tmp_path / "a"), str(release)])
    second = None
    try:
        while not (tmp_path / "a.holding").exists():
            assert first.poll() is None
            time.sleep(0.01)
        second = subprocess.Popen([sys.executable, "-c", LAUNCH_LOCK, str(runs), str(tmp_path / "b"), "-"])
        while not (tmp_path / "b.waiting").exists():
            assert second.poll() is None, "the second launch did not wait"
            time.sleep(0.01)
        assert not (tmp_path / "b.holding").exists()
        assert f"waiting for another launch of sweep smoke (pid {first.pid} on host " in (tmp_path / "b.waiting").read_text()
        release.write_text("go")
        assert first.wait(60) == 0 and second.wait(60) == 0
        assert (tmp_path / "b.holding").exists()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert (runs / ".sweeps" / "smoke.lock").exists() and locks.holder(runs / ".sweeps" / "smoke.lock") is None


# ---------------------------------------------------------------------------------------------
# Two writers on one run
# ---------------------------------------------------------------------------------------------


def test_two_identical_runs_started_together_one_trains_the_other_is_told_who(tmp_path, procs):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    args = [*(o for o in QUICK if not o.startswith("wandb.mode=")), f"runs_dir={runs}", "wandb.mode=offline"]
    cfg = compose(args)
    run_id = run_id_of(cfg)
    run_dir = runs / run_id
    procs += [Proc("mixer_scaling.train", args, tmp_path, name, gate=gate) for name in ("a", "b")]
    # Whichever takes the lock trains and stops at step 2 (the gate); the other must be refused meanwhile.
    wait_until(lambda: reached(gate) and any(p.done() for p in procs), procs, "one trains, one is refused",
               allowed_to_end=procs)
    winner = next(p for p in procs if p.pid == holder_pid(gate))
    [loser] = [p for p in procs if p is not winner]
    assert not winner.done()
    assert loser.finish() == locks.EXIT_BUSY == 69, loser.output()[-3000:]
    errors = [l for l in loser.stderr_lines() if l.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(refusal_pattern(run_id, winner.pid), errors[0]), loser.output()[-3000:]
    assert "Traceback" not in loser.output()
    assert locks.run_holder(run_dir)["pid"] == winner.pid

    gate.write_text("go")
    assert winner.finish() == 0, winner.output()[-3000:]
    rec = read_record(run_dir)
    assert rec["status"] == "done" and rec["attempts"] == 1
    assert not [e for e in rec["events"] if KILLED in e["message"]]  # no false "killed by SIGKILL"
    assert train_steps(run_dir) == TRAIN_STEPS  # each step once
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and offline[0].name.endswith(run_id)  # one W&B run for the one writer
    assert locks.run_holder(run_dir) is None


def test_sigkill_of_the_holder_frees_the_run_and_a_rerun_resumes(tmp_path, procs):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    args = [*QUICK, f"runs_dir={runs}"]
    run_dir = runs / run_id_of(compose(args))
    holder = Proc("mixer_scaling.train", args, tmp_path, "a", gate=gate, gate_step=6)  # past the step-4 checkpoint
    procs.append(holder)
    wait_until(lambda: reached(gate), procs, "step 6")
    assert locks.run_holder(run_dir)["pid"] == holder.pid
    holder.proc.send_signal(signal.SIGKILL)
    assert holder.finish() == -signal.SIGKILL
    assert locks.run_holder(run_dir) is None  # released by the kernel with the process

    rerun = Proc("mixer_scaling.train", args, tmp_path, "b")
    procs.append(rerun)
    assert rerun.finish() == 0, rerun.output()[-3000:]
    rec = read_record(run_dir)
    assert rec["status"] == "done" and rec["attempts"] == 2
    assert [e["attempt"] for e in rec["events"] if KILLED in e["message"]] == [2]  # the true one, said once
    assert "resuming from step 4" in rerun.output()
    assert train_steps(run_dir) == TRAIN_STEPS
    assert losses(run_dir) == losses(Path(reference(QUICK)["run_dir"]))


def test_a_live_writers_temp_file_survives_a_second_starter_and_a_waiter_skips_the_finished_run(tmp_path, procs):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    args = [*QUICK, f"runs_dir={runs}"]
    run_id = run_id_of(compose(args))
    run_dir = runs / run_id
    writer = Proc("mixer_scaling.train", args, tmp_path, "writer", gate=gate)
    procs.append(writer)
    wait_until(lambda: reached(gate), procs, "the writer at step 2")
    in_flight = run_dir / f".{records.CHECKPOINT_FILE}.live0001.tmp"  # a checkpoint write in flight
    in_flight.write_bytes(b"\0" * 4096)
    before = read_record(run_dir)

    # A second start as a Hydra multirun cell: running elsewhere is not a failure there (exit 0).
    cell = Proc("mixer_scaling.train", ["-m", *args], tmp_path, "cell")
    procs.append(cell)
    assert cell.finish() == 0, cell.output()[-3000:]
    assert any(re.fullmatch(refusal_pattern(run_id, writer.pid), l) for l in cell.stderr_lines()), cell.output()[-3000:]
    assert in_flight.exists() and read_record(run_dir) == before  # nothing tidied, nothing rewritten

    # A waiter blocks until the writer ends, then finds the run done and skips it.
    waiter = Proc("mixer_scaling.train", [*args, "wait_for_lock=true"], tmp_path, "waiter")
    procs.append(waiter)
    wait_until(lambda: "waiting for it to end" in waiter.output(), [writer, waiter], "the waiter waiting")
    assert f"being trained by pid {writer.pid} on host" in waiter.output()
    gate.write_text("go")
    assert writer.finish() == 0, writer.output()[-3000:]
    assert waiter.finish() == 0, waiter.output()[-3000:]
    done = read_record(run_dir)
    assert done["status"] == "done" and done["attempts"] == 1 and "not retraining" in waiter.output()
    assert train_steps(run_dir) == TRAIN_STEPS and in_flight.exists()


@pytest.mark.slow
def test_two_finetunes_of_one_parent_one_trains(tmp_path, procs):
    from mixer_scaling.finetune import compose_finetune, prepare
    from mixer_scaling.train import run

    runs, gate = tmp_path / "runs", tmp_path / "gate"
    parent = run(compose([*TINY, "model=mixer/micro", "train.examples_seen=128", "data.image_size=16",
                          "fewshot.datasets=[digits]", "fewshot.shots=[1]", "eval.throughput_batch_sizes=[8]",
                          f"runs_dir={runs}"]))
    ft = [f"parent={parent['run_dir']}", f"runs_dir={runs}", "data.seed=1", "data.num_classes=10", "data.size=128",
          "data.val_size=128", "train.batch_size=32", "train.examples_seen=256", "train.warmup_steps=2",
          "train.log_every=1", "train.checkpoint_every=0", "eval.batch_size=128", "eval.throughput_batch_sizes=[8]",
          "eval.throughput_repeats=1", "wandb.mode=disabled", "progress=false"]
    cfg = prepare(compose_finetune(ft)).cfg
    run_id, run_dir = run_id_of(cfg), runs / run_id_of(cfg)
    procs += [Proc("mixer_scaling.finetune", ft, tmp_path, name, gate=gate) for name in ("a", "b")]
    wait_until(lambda: reached(gate) and any(p.done() for p in procs), procs, "one fine-tunes, one is refused",
               allowed_to_end=procs)
    winner = next(p for p in procs if p.pid == holder_pid(gate))
    [loser] = [p for p in procs if p is not winner]
    assert loser.finish() == 69, loser.output()[-3000:]
    assert any(re.fullmatch(refusal_pattern(run_id, winner.pid), l) for l in loser.stderr_lines())
    gate.write_text("go")
    assert winner.finish() == 0, winner.output()[-3000:]
    rec = read_record(run_dir)
    assert rec["status"] == "done" and rec["attempts"] == 1 and rec["parent_run_id"] == parent["run_id"]
    assert not [e for e in rec["events"] if KILLED in e["message"]]
    assert [r["step"] for r in records.MetricsLog(run_dir).read() if "train/loss" in r] == list(range(1, 9))


# ---------------------------------------------------------------------------------------------
# Two launches of one sweep
# ---------------------------------------------------------------------------------------------

SWEEP = ["smoke", "model=mixer/micro", "seed=0,1", "wandb.mode=disabled"]


def _cells(runs: Path):
    from mixer_scaling.sweep import load

    return load("smoke", [*SWEEP[1:], f"runs_dir={runs}"], progress=False).cells


@pytest.mark.slow
def test_a_relaunch_reports_cells_another_launch_is_running_and_starts_none(tmp_path, procs):
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    launch_args = ["sweep", "launch", *SWEEP, f"runs_dir={runs}", "--executor", "local", "--parallel", "2"]
    first = Proc("mixer_scaling.cli", launch_args, tmp_path, "first", gate=gate)
    procs.append(first)
    wait_until(lambda: len(reached(gate)) == 2, procs, "both cells training")
    second = Proc("mixer_scaling.cli", launch_args, tmp_path, "second", env={"COLUMNS": "250"})
    procs.append(second)
    assert second.finish() == 0, second.output()[-3000:]
    out = second.output()
    assert "2 cells; 0 to run (skipping 2 running)" in out and "nothing to submit" in out, out[-3000:]
    assert out.count("held by pid") == 2  # the grid table names each holder
    gate.write_text("go")
    assert first.finish() == 0, first.output()[-3000:]
    for cell in _cells(runs):
        rec = read_record(cell.run_dir)
        assert rec["status"] == "done" and rec["attempts"] == 1, cell.label
        assert train_steps(cell.run_dir) == [2, 4, 6, 8]


@pytest.mark.slow
def test_two_launches_started_together_train_each_cell_once(tmp_path, procs):
    runs = tmp_path / "runs"
    launch_args = ["sweep", "launch", *SWEEP, f"runs_dir={runs}", "--executor", "local", "--parallel", "2"]
    procs += [Proc("mixer_scaling.cli", launch_args, tmp_path, name) for name in ("a", "b")]
    codes = [p.finish() for p in procs]
    outputs = [p.output() for p in procs]
    assert all(c in (0, 1) for c in codes), outputs
    assert not any(re.search(r"\bfailed\b|Traceback", o) for o in outputs), outputs
    for cell in _cells(runs):
        rec = read_record(cell.run_dir)
        assert rec["status"] == "done" and rec["attempts"] == 1, (cell.label, outputs)
        assert not [e for e in rec["events"] if KILLED in e["message"]]
        assert train_steps(cell.run_dir) == [2, 4, 6, 8]
    assert any(c == 0 for c in codes)  # the launch that trained a cell last saw every cell done
