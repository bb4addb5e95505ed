"""Early stopping (paper §3.3): the best upstream-validation step is kept and every reported metric
comes from its weights; it survives a resume; selection and report use disjoint halves of val."""

import os
import signal

import pytest
import torch

from mixer_scaling import checkpoint, records
from mixer_scaling.checkpoint import load
from mixer_scaling.config import compose
from mixer_scaling.data import build_data
from mixer_scaling.data.build import split_validation
from mixer_scaling.engine import Interrupted
from mixer_scaling.evaluate.classify import ordered_loader, top1
from mixer_scaling.models import build_model
from mixer_scaling.records import MetricsLog, run_id_of
from mixer_scaling.train import run

# 10 classes, 60 training images, 60 epochs at a high learning rate: the model memorises its training
# set and upstream validation peaks long before the end.
OVERFIT = [
    "model=mixer/micro", "data.num_classes=10", "data.size=60", "data.val_size=400",
    "train.examples_seen=3840", "train.batch_size=32", "train.lr=0.01", "train.warmup_steps=5",
    "train.eval_every_examples=320", "train.log_every=10", "train.checkpoint_every=20",
    "fewshot.datasets=[digits]", "fewshot.shots=[5]", "eval.throughput_batch_sizes=[32]",
    "eval.throughput_repeats=1", "wandb.mode=disabled", "progress=false",
    "train.precision=fp32",  # the same trajectory on every CPU
]


def _report_top1(cfg, weights):
    data = build_data(cfg.data)
    model = build_model(cfg.model, num_classes=data.num_classes, image_size=data.image_size)
    model.load_state_dict(weights)
    return top1(model, ordered_loader(data.report, cfg.eval.batch_size, data.collate_fn), torch.device("cpu"))


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    cfg = compose([*OVERFIT, f"runs_dir={tmp_path_factory.mktemp('overfit') / 'runs'}"])
    return cfg, run(cfg)


def test_the_best_step_is_chosen_on_the_selection_half_and_reported(overfit):
    cfg, rec = overfit
    curve = rec["upstream_curve"]
    assert [p["step"] for p in curve] == list(range(10, 121, 10))  # every 320 examples, and the last step
    scores = [p["select_top1"] for p in curve]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the earlier step
    assert rec["best_step"] == curve[best]["step"] < rec["steps"] and rec["early_stopped"] is True
    assert scores[-1] < scores[best]  # the run overfits: its last weights are worse
    assert rec["metrics"]["select_top1"] == scores[best]
    run_dir = records.Path(rec["run_dir"])
    best_ckpt = load(run_dir / records.BEST_CHECKPOINT_FILE)
    assert best_ckpt["step"] == rec["best_step"]
    # val_top1 is the report half, computed from the best weights, not the last ones
    assert rec["metrics"]["val_top1"] == _report_top1(cfg, best_ckpt["model"])
    last = torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["model"]
    assert rec["metrics"]["val_top1"] != _report_top1(cfg, last)
    evals = [r for r in MetricsLog(run_dir).read() if "val/select_top1" in r]
    assert [r["val/select_top1"] for r in evals] == scores


def test_the_two_halves_of_val_are_disjoint_and_cover_it():
    data = build_data(compose(["data.val_size=101"]).data)
    select, report = split_validation(data.val, 0)
    assert len(select) == 50 and len(report) == 51
    assert not set(select.indices) & set(report.indices)
    assert sorted(select.indices + report.indices) == list(range(101))
    assert split_validation(data.val, 1)[0].indices != select.indices  # data.seed fixes them


@pytest.mark.parametrize("how", ["signal", "crash"])
def test_early_stopping_survives_a_resume(overfit, tmp_path, monkeypatch, how):
    """A stop signal at the evaluation of step 50 (the checkpoint comes first, the evaluation is done on
    resume), or a crash right after a new best was written and before the checkpoint that follows it:
    the resumed run ends like the clean one."""
    _, clean = overfit
    cfg = compose([*OVERFIT, f"runs_dir={tmp_path / 'runs'}"])
    append = MetricsLog.append

    save_weights = checkpoint.save_weights

    def signal_at_an_eval(self, row):
        append(self, row)
        if row.get("step") == 50 and "val/select_top1" in row:
            os.kill(os.getpid(), signal.SIGTERM)

    def crash_after_saving_the_best(path, **kw):  # the best weights are on disk, the checkpoint is not
        save_weights(path, **kw)
        if kw["step"] > 10:  # the second evaluation; its curve still rises
            raise RuntimeError("node failure")

    if how == "signal":
        monkeypatch.setattr(MetricsLog, "append", signal_at_an_eval)
    else:
        monkeypatch.setattr(checkpoint, "save_weights", crash_after_saving_the_best)
    with pytest.raises(Interrupted if how == "signal" else RuntimeError):
        run(cfg)
    run_dir = records.Path(cfg.runs_dir) / run_id_of(cfg)
    if how == "crash":  # the weights on disk are newer than the last checkpoint, which names the ones kept aside
        assert load(run_dir / records.BEST_CHECKPOINT_FILE)["step"] > \
            torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["counters"]["best_step"]
    monkeypatch.undo()
    resumed = run(cfg)
    assert resumed["attempts"] == 2
    for key in ("best_step", "early_stopped", "upstream_curve", "metrics"):
        assert resumed[key] == clean[key], key


def test_without_a_cadence_the_final_weights_are_reported(tiny):
    rec = run(compose([*tiny, "train.eval_every_examples=0"]))
    assert rec["best_step"] == rec["steps"] and rec["early_stopped"] is False and rec["upstream_curve"] == []
    assert not (records.Path(rec["run_dir"]) / records.BEST_CHECKPOINT_FILE).exists()
    assert 0 <= rec["metrics"]["select_top1"] <= 1


@pytest.mark.parametrize("every, batch, steps, due", [
    (320, 32, 25, [10, 20, 25]),        # every 10 steps, and the last
    (100, 64, 6, [2, 4, 5, 6]),          # a cadence that is not a multiple of the batch: each crossing
    (0, 32, 25, []),                     # no cadence: no evaluation during training
])
def test_evaluation_is_due_where_the_examples_seen_cross_the_cadence(every, batch, steps, due):
    from omegaconf import OmegaConf

    from mixer_scaling.engine import Loop

    t = OmegaConf.create({"examples_seen": steps * batch, "batch_size": batch, "eval_every_examples": every})
    loop = Loop(model=None, train_set=None, collate_fn=None, num_classes=2, cfg=t, seed=0,
                device=torch.device("cpu"), ckpt_path=records.Path("unused"))
    assert [s for s in range(1, steps + 1) if loop.eval_due(s)] == due
