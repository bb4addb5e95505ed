"""What a record says was trained is what was trained (issue 16, items 3 and 11).

A run trains ceil(examples_seen / batch) whole global batches. The record keeps ``examples_seen`` (the
configured budget) and adds ``examples_trained`` (steps × batch); ``epochs`` and ``train_flops`` count what
was trained. A run stopped by a signal and resumed to the end has a ``done`` record without the
``interrupted_at_step`` of the attempt that was stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY
from mixer_scaling.config import compose
from mixer_scaling.records import MetricsLog, read_record, run_id_of
from mixer_scaling.train import run

GATE_DIR = Path(__file__).parent / "faults" / "gate"  # holds a real training process at a logged step


@pytest.mark.parametrize("examples_seen,batch_size,steps", [(512, 1000, 1), (1024, 64, 16), (1000, 64, 16)])
def test_the_record_counts_the_whole_batches_trained(tiny, examples_seen, batch_size, steps):
    rec = run(compose([*tiny, "model=mixer/micro", f"train.examples_seen={examples_seen}",
                       f"train.batch_size={batch_size}", "train.warmup_steps=0", "train.eval_every_examples=0",
                       "fewshot.datasets=[digits]", "fewshot.shots=[1]"]))
    trained = steps * batch_size
    assert rec["status"] == "done" and rec["steps"] == steps
    assert rec["examples_seen"] == examples_seen  # the configured budget, as asked
    assert rec["examples_trained"] == trained >= examples_seen
    assert rec["train_size"] == 2000 and rec["epochs"] == pytest.approx(trained / 2000)
    assert rec["train_flops"] == pytest.approx(3 * rec["flops_per_image"] * trained)
    last = [r for r in MetricsLog(Path(rec["run_dir"])).read() if "train/loss" in r][-1]
    assert last["step"] == steps and last["examples"] == trained  # what the training loop itself logged
    assert rec["train_img_per_s"] == pytest.approx(trained / rec["train_seconds"])


def test_a_resumed_run_that_finished_has_no_stale_interrupted_step(tmp_path):
    """A real process stopped with SIGTERM mid-run (exit 75, record `interrupted` at that step), then run
    again to the end: the done record no longer says where an earlier attempt was interrupted."""
    args = [*TINY, "model=mixer/micro", "fewshot.datasets=[digits]", "fewshot.shots=[1]",
            f"runs_dir={tmp_path / 'runs'}"]
    run_dir = tmp_path / "runs" / run_id_of(compose(args))
    gate = tmp_path / "gate"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MIXER_TEST_GATE": str(gate), "MIXER_TEST_GATE_STEP": "4",
           "PYTHONPATH": os.pathsep.join([str(GATE_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "mixer_scaling.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("gate.reached.*")):  # held by the gate at logged step 4
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the run never reached step 4"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        gate.write_text("go")
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out[-3000:]
    stopped = read_record(run_dir)
    assert stopped["status"] == "interrupted" and stopped["interrupted_at_step"] >= 4

    env.pop("MIXER_TEST_GATE")
    again = subprocess.run([sys.executable, "-m", "mixer_scaling.train", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    done = read_record(run_dir)
    assert done["status"] == "done" and done["attempts"] == 2
    assert "interrupted_at_step" not in done, done["interrupted_at_step"]
