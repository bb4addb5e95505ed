"""Preemption at ten random points: every stop checkpoints, every restart resumes, and the run that was
stopped ten times ends bit-identical (losses, metrics, every weight) to one that never stopped.

The stops are real signals to a real ``python -m mixer_scaling.train`` process, the ones SLURM sends:
SIGTERM (preemption, scancel), SIGUSR1/SIGUSR2 (``--signal``, submitit's time-limit warning) and SIGINT
(Ctrl-C). Each lands wherever the process happens to be (forward, backward, a checkpoint write, the
logging step): the points are drawn from a fixed seed, their timing is the process's own.
"""

from __future__ import annotations

import random

from fault_helpers import QUICK, SIGNALS, Run, reference, losses, metrics_lines, same_weights, weights

EXIT_INTERRUPTED = 75
STEPS = 44
OVERRIDES = [*QUICK, "train.batch_size=32", f"train.examples_seen={STEPS * 32}", "train.log_every=1",
             "train.checkpoint_every=16"]


def stop_points(n: int, seed: int = 20261121) -> list[int]:
    """``n`` random steps spread over the run (one per slice, so no two stops collide)."""
    rng = random.Random(seed)
    width = (STEPS - 4) / n
    return [1 + int(i * width) + rng.randrange(max(1, int(width) - 1)) for i in range(n)]


def test_ten_preemptions_at_random_points_resume_bit_identical(tmp_path):
    clean = reference(OVERRIDES)

    job = Run([*OVERRIDES, f"runs_dir={tmp_path / 'cut'}"], cwd=tmp_path)
    stops = []
    for i, target in enumerate(stop_points(10)):
        job.start()
        job.wait_for(lambda: job.logged_step() >= target)
        job.send(SIGNALS[i % len(SIGNALS)])
        assert job.finish() == EXIT_INTERRUPTED, job.output()[-2000:]
        rec = job.record()
        assert rec["status"] == "interrupted", rec
        stops.append(rec["interrupted_at_step"])
        # the checkpoint is the stop's own step: nothing done before the signal is lost
        assert job.logged_step() == stops[-1]
    assert len(set(stops)) == 10 and stops == sorted(stops) and stops[-1] < STEPS, stops

    job.start()
    assert job.finish() == 0, job.output()[-2000:]
    done = job.record()
    assert done["status"] == "done" and done["attempts"] == 11
    assert done["events"] == []  # clean stops: nothing to recover from
    assert losses(job.run_dir) == losses(clean["run_dir"])
    assert metrics_lines(job.run_dir) == metrics_lines(clean["run_dir"])
    assert done["metrics"] == clean["metrics"]
    assert same_weights(weights(job.run_dir), weights(clean["run_dir"]))
    assert done["examples_seen"] == clean["examples_seen"]
