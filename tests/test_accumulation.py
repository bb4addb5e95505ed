"""Memory that fits: gradient accumulation and activation checkpointing change how an update is computed,
not the update (issue 13, item 1). Real runs through the train entry point, on CPU in fp32."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from conftest import TINY
from mixer_scaling import records
from mixer_scaling.config import compose
from mixer_scaling.engine import Interrupted
from mixer_scaling.models.mixer import MlpMixer
from mixer_scaling.records import MetricsLog, read_record, run_id_of
from mixer_scaling.train import run

# Two updates of a 256-image global batch; few-shot and throughput kept to the minimum.
BASE = [*TINY, "data.image_size=16", "train.batch_size=256", "train.examples_seen=512", "train.precision=fp32",
        "fewshot.datasets=[digits]", "fewshot.shots=[1]", "eval.throughput_batch_sizes=[8]"]


def weights(rec: dict) -> dict:
    return torch.load(records.Path(rec["run_dir"]) / records.CHECKPOINT_FILE, weights_only=False)["model"]


@pytest.mark.parametrize("model", ["mixer/micro", "vit/micro", "bit/micro"])
def test_four_micro_batches_give_the_update_of_the_whole_batch(tmp_path, model):
    def train(name, *extra):
        return run(compose([*BASE, f"model={model}", f"runs_dir={tmp_path / name}", *extra]))

    whole = train("whole")
    accumulated = train("accumulated", "train.accum_steps=4")
    checkpointed = train("checkpointed", "train.accum_steps=4", "train.grad_checkpointing=true")
    # the same run: how the update is computed is not part of its identity
    assert whole["run_id"] == accumulated["run_id"] == checkpointed["run_id"]
    a, b, c = weights(whole), weights(accumulated), weights(checkpointed)
    assert a.keys() == b.keys() == c.keys()
    for k in a:  # the same two updates, up to float summation order
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
        assert torch.allclose(b[k], c[k], rtol=1e-5, atol=1e-7), k  # recomputation: the same values
    losses = [r["train/loss"] for r in MetricsLog(records.Path(accumulated["run_dir"])).read() if "train/loss" in r]
    whole_losses = [r["train/loss"] for r in MetricsLog(records.Path(whole["run_dir"])).read() if "train/loss" in r]
    assert losses == pytest.approx(whole_losses, rel=1e-5)  # the logged loss is the whole batch's mean


def test_a_stop_in_the_middle_of_an_update_resumes_bit_exact(tmp_path, monkeypatch):
    """SIGTERM arrives during the first of two micro-batches of step 5: the update is finished, the
    checkpoint is step 5's, and the resumed run ends bit for bit like an uninterrupted one."""
    cfg = [*BASE, "model=mixer/micro", "train.batch_size=64", "train.examples_seen=640", "train.accum_steps=2",
           "train.checkpoint_every=100"]
    clean = run(compose([*cfg, f"runs_dir={tmp_path / 'clean'}"]))
    cut_cfg = compose([*cfg, f"runs_dir={tmp_path / 'cut'}"])
    forward, calls = MlpMixer.forward, []

    def stop_inside_step_5(self, x):
        if self.training:
            calls.append(len(x))
            if len(calls) == 9:  # step 5, micro-batch 1 of 2
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, x)

    monkeypatch.setattr(MlpMixer, "forward", stop_inside_step_5)
    with pytest.raises(Interrupted):
        run(cut_cfg)
    run_dir = tmp_path / "cut" / run_id_of(cut_cfg)
    assert set(calls[:9]) == {32} and len(calls) == 10  # micro-batches of 32; step 5 was completed
    assert torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["step"] == 5
    assert read_record(run_dir)["status"] == "interrupted"
    monkeypatch.setattr(MlpMixer, "forward", forward)
    resumed = run(cut_cfg)
    a, b = weights(resumed), weights(clean)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"] == clean["metrics"]


def test_a_batch_the_micro_batches_do_not_divide_is_one_line():
    from mixer_scaling.config import validate
    from mixer_scaling.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^train.accum_steps=3 is not allowed with train.batch_size=128; "
                                          r"expected a divisor of it"):
        validate(compose(["train.accum_steps=3"]))
