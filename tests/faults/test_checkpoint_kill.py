"""SIGKILL while a large checkpoint is being written, at several byte offsets of the write.

SIGKILL cannot be caught: the process just vanishes, mid-``write()``, with a partial temp file on disk and
a record still saying ``running``. Each next start must resume from the last complete checkpoint (never
from the partial file), remove the leftover, and say in the record what happened; the run that was
killed four times ends bit-identical to one that never was.
"""

from __future__ import annotations

import signal

from fault_helpers import QUICK, Run, losses, same_weights, weights
from mixer_scaling import checkpoint, records
from mixer_scaling.config import compose
from mixer_scaling.train import run

# Mixer-S/32 on 32x32 images: one token, so a step is cheap, but 19M parameters (+ AdamW's two moments)
# make a ~220 MB checkpoint, written at every step: a kill lands inside a write.
STEPS = 8
OVERRIDES = [*QUICK, "model=mixer/s32", "data.image_size=32", "train.batch_size=8",
             f"train.examples_seen={STEPS * 8}", "train.log_every=1", "train.checkpoint_every=1"]
KILL_AT = (0.0, 0.25, 0.5, 0.9)  # fraction of the checkpoint's bytes written when SIGKILL arrives


def partial_writes(run_dir):
    return sorted(run_dir.glob(f".{records.CHECKPOINT_FILE}.*.tmp"))


def test_sigkill_mid_checkpoint_write_resumes_from_the_last_complete_one(tmp_path):
    clean = run(compose([*OVERRIDES, "train.checkpoint_every=0", f"runs_dir={tmp_path / 'clean'}"]))

    job = Run([*OVERRIDES, f"runs_dir={tmp_path / 'cut'}"], cwd=tmp_path)
    ckpt = job.run_dir / records.CHECKPOINT_FILE
    full_size = None
    kills = []
    for fraction in KILL_AT:
        stale = set(partial_writes(job.run_dir))  # the last kill's leftover: the new attempt must remove it
        job.start()
        if full_size is None:
            job.wait_for(ckpt.exists)
            full_size = ckpt.stat().st_size

        def writing_past_offset():
            for tmp in partial_writes(job.run_dir):
                try:
                    if tmp not in stale and tmp.stat().st_size >= fraction * full_size:
                        return True
                except FileNotFoundError:  # that write has just completed (renamed): wait for the next one
                    pass
            return False

        job.wait_for(writing_past_offset, poll=0.001)
        job.send(signal.SIGKILL)
        assert job.finish() == -signal.SIGKILL
        assert not stale & set(partial_writes(job.run_dir))
        [leftover] = partial_writes(job.run_dir)
        offset = leftover.stat().st_size
        # what a correct resume must pick: the newest checkpoint on disk that verifies
        last_complete = checkpoint.load(ckpt)["step"]
        assert job.record()["status"] == "running"  # SIGKILL leaves no chance to close the record
        kills.append((fraction, offset, last_complete))
    # every kill fell inside a write, each at a different place in it
    assert all(offset < full_size for _, offset, _ in kills), kills
    assert len({offset for _, offset, _ in kills}) == len(KILL_AT), kills

    job.start()
    assert job.finish() == 0, job.output()[-3000:]
    done = job.record()
    assert done["status"] == "done" and done["attempts"] == len(KILL_AT) + 1
    messages = [e["message"] for e in done["events"]]
    for attempt, (_, offset, step) in enumerate(kills, start=2):
        said = [e["message"] for e in done["events"] if e["attempt"] == attempt]
        assert any("ended without closing its record" in m for m in said), said
        assert any(f"({offset} bytes), a checkpoint write cut off by a kill; it was never loaded" in m
                   for m in said), said
        assert any(f"resuming from checkpoint.pt (step {step})" in m for m in said), said
    assert not partial_writes(job.run_dir), messages
    assert losses(job.run_dir) == losses(clean["run_dir"])
    assert done["metrics"] == clean["metrics"]
    assert same_weights(weights(job.run_dir), weights(clean["run_dir"]))
