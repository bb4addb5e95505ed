"""Fine-tuning a finished run (paper App. C): higher-resolution inits, records linked to the parent, bad input.

Parents are pre-trained at 16px (the real pre-training entry point, a few steps) and fine-tuned at 32px,
so that every run here takes seconds on 2 CPU cores; K = 2 exercises the same code as 224 → 448.
"""

import json
import math
import shutil
import sys

import pytest
import torch

from conftest import TINY, run_cli
from mixer_scaling import finetune, records
from mixer_scaling.config import compose
from mixer_scaling.finetune import adapt, compose_finetune, load_parent_model, prepare, run_finetune
from mixer_scaling.models import count_params
from mixer_scaling.models.flops import count_model_flops
from mixer_scaling.records import MetricsLog, read_record
from mixer_scaling.train import run

PARENT = [*TINY, "train.examples_seen=128", "data.image_size=16", "fewshot.datasets=[digits]", "fewshot.shots=[1]",
          "eval.throughput_batch_sizes=[8]"]
# A "downstream" set: other classes of the embedded generator, small enough to see the loss fall.
FT = ["data.seed=1", "data.num_classes=10", "data.size=128", "data.val_size=128", "train.batch_size=32",
      "train.warmup_steps=2", "train.log_every=1", "train.checkpoint_every=0", "eval.batch_size=128",
      "eval.throughput_batch_sizes=[8]", "eval.throughput_repeats=1", "wandb.mode=disabled", "progress=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("ft") / "runs"


@pytest.fixture(scope="module")
def parents(runs):
    """model → record of a finished pre-training run, trained on first use."""
    done = {}

    def get(model):
        if model not in done:
            done[model] = run(compose([*PARENT, f"model={model}", f"runs_dir={runs}"]))
        return done[model]

    return get


def _ft(parent, runs, *extra):
    return compose_finetune([f"parent={parent['run_dir']}", f"runs_dir={runs}", *FT, *extra])


def _quarters(x):
    h = x.shape[-1] // 2
    return [x[..., r * h:(r + 1) * h, c * h:(c + 1) * h] for r in range(2) for c in range(2)]


def test_mixer_at_twice_the_resolution_computes_the_parent_part_by_part_then_trains(parents, runs):
    parent = parents("mixer/micro")
    cfg = _ft(parent, runs, "image_size=32", "train.examples_seen=512", "train.lr=0.1")
    plan = prepare(cfg)
    assert plan.factor == 2 and plan.cfg.parent == parent["run_id"] and plan.cfg.data.image_size == 32

    # The expanded model's features on a 32px image are the mean of the parent's on its four 16px parts,
    # and so are its logits under any shared head: it starts from the parent's loss on the part-wise input.
    old, new = load_parent_model(plan).eval(), adapt(plan, load_parent_model(plan), 10).eval()
    assert not new.head.weight.any() and not new.head.bias.any()  # a fresh zero-initialised head
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        parts = torch.stack([old.forward_features(q) for q in _quarters(x)]).mean(0)
        torch.testing.assert_close(new.forward_features(x), parts, atol=1e-5, rtol=1e-5)
        old.reset_classifier(10)
        torch.nn.init.normal_(old.head.weight)
        new.head.load_state_dict(old.head.state_dict())
        y = torch.randint(0, 10, (6,))
        part_loss = torch.nn.functional.cross_entropy(old.head(parts), y)
        torch.testing.assert_close(torch.nn.functional.cross_entropy(new(x), y), part_loss, atol=1e-5, rtol=1e-5)

    rec = run_finetune(cfg)
    run_dir = records.Path(rec["run_dir"])
    assert read_record(run_dir) == json.loads(json.dumps(rec, default=str)) and rec["status"] == "done"
    assert (rec["parent_run_id"], rec["parent_run_dir"]) == (parent["run_id"], str(records.Path(parent["run_dir"]).resolve()))
    assert (rec["finetune_factor"], rec["image_size"], rec["parent_image_size"], rec["num_classes"]) == (2, 32, 16, 10)
    assert 0.0 <= rec["metrics"]["val_top1"] <= 1.0 and rec["metrics"]["fewshot"] == {}
    assert rec["config"]["train"]["optimizer"] == "momentum" and rec["config"]["train"]["weight_decay"] == 0.0
    assert rec["params"] == count_params(new) and rec["flops_per_image"] == count_model_flops(new, 32)
    losses = [r["train/loss"] for r in MetricsLog(run_dir).read() if "train/loss" in r]
    assert len(losses) == 16 and losses[0] == pytest.approx(math.log(10), abs=1e-4)  # zero head: uniform
    assert sum(losses[-4:]) / 4 < losses[0] - 0.1, losses  # it trains

    # The same fine-tune with the parent named by run id: the same run (id hashes the parent's id), skipped.
    again = run_finetune(compose_finetune([f"parent={parent['run_id']}", f"runs_dir={runs}", *FT, "image_size=32",
                                           "train.examples_seen=512", "train.lr=0.1"]))
    assert again["run_id"] == rec["run_id"] and again["updated_at"] == rec["updated_at"]


def test_vit_keeps_or_resamples_its_position_embeddings(parents, runs, tmp_path):
    parent = parents("vit/tiny")
    same = prepare(_ft(parent, runs))
    assert same.factor == 1 and same.cfg.image_size == 16
    pos = torch.load(records.Path(parent["run_dir"]) / records.CHECKPOINT_FILE, weights_only=False)["model"]["pos_embed"]
    assert torch.equal(adapt(same, load_parent_model(same), 10).pos_embed.detach(), pos)
    bigger = prepare(_ft(parent, runs, "image_size=24"))  # ViT takes any patch multiple, K need not be an integer
    vit = adapt(bigger, load_parent_model(bigger), 10)
    assert vit.pos_embed.shape == (1, 1 + 36, 128) and torch.equal(vit.pos_embed[:, :1].detach(), pos[:, :1])

    # The real entry point, K = 1; in W&B a fine-tune of the parent's study (W&B itself: test_train).
    out = tmp_path / "ft-runs"
    proc = run_cli(["-m", "mixer_scaling.finetune", f"parent={parent['run_dir']}", f"runs_dir={out}", *FT,
                    "train.examples_seen=128"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rec = read_record(run_dir)
    assert rec["status"] == "done" and rec["parent_run_id"] == parent["run_id"] and rec["finetune_factor"] == 1
    assert rec["config"]["wandb"]["job_type"] == "finetune" and rec["config"]["wandb"]["group"] == parent["study"]


def test_bit_loads_unchanged_at_twice_the_resolution(parents, runs):
    parent = parents("bit/tiny")
    rec = run_finetune(_ft(parent, runs, "image_size=32", "train.examples_seen=128"))
    assert rec["status"] == "done" and (rec["finetune_factor"], rec["image_size"]) == (2, 32)
    plan = prepare(_ft(parent, runs, "image_size=32"))
    old = load_parent_model(plan).state_dict()
    new = adapt(plan, load_parent_model(plan), 10).state_dict()
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith("head."))


def _copy(parent, dest, drop=None, **fields):
    shutil.copytree(parent["run_dir"], dest)
    if drop:
        (dest / drop).unlink()
    if fields:
        records.atomic_write_json(dest / records.RESULT_FILE, {**read_record(dest), **fields})
    return dest


BAD = {
    "no parent": (lambda p, d: [], ["parent is required"]),
    "parent not found": (lambda p, d: ["parent=nope"], ["parent='nope'", "neither a run directory nor a run id"]),
    "parent without checkpoint": (lambda p, d: [f"parent={_copy(p, d, drop=records.CHECKPOINT_FILE)}"],
                                  ["has no checkpoint.pt"]),
    "parent not done": (lambda p, d: [f"parent={_copy(p, d, status='interrupted')}"], ["is interrupted, not done"]),
    "parent is a fine-tune": (lambda p, d: [f"parent={_copy(p, d, parent_run_id='abc')}"], ["itself a fine-tune"]),
    "non-integer K for Mixer": (lambda p, d: [f"parent={p['run_dir']}", "image_size=24"],
                                ["image_size=24", "integer K"]),
    "smaller than the parent": (lambda p, d: [f"parent={p['run_dir']}", "image_size=8"], ["image_size=8", "integer K"]),
    "other family": (lambda p, d: [f"parent={p['run_dir']}", "model=vit/tiny"],
                     ["model=vit/tiny", "mixer/micro", "family mixer"]),
    "other patch size": (lambda p, d: [f"parent={p['run_dir']}", "model=mixer/s32"], ["model=mixer/s32", "patch 4"]),
}


def _tree(root):
    return sorted(str(p) for p in root.rglob("*"))


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_clear_line_and_creates_nothing(parents, runs, tmp_path, monkeypatch, capsys, name):
    parent = parents("mixer/micro")
    make, must_mention = BAD[name]
    args = make(parent, tmp_path / "copy")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = _tree(runs.parent), _tree(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mixer_scaling.finetune", *args, f"runs_dir={runs}", *FT])
    with pytest.raises(SystemExit) as exit_info:
        finetune.main()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, err
    for word in must_mention:
        assert word in lines[0], (word, lines[0])
    assert (_tree(runs.parent), _tree(tmp_path)) == before


def test_collect_leaves_fine_tunes_out_of_the_pretraining_table(parents, runs):
    """A fine-tune's record describes a downstream set: it must not land among pre-training points."""
    from mixer_scaling.analysis.results import collect

    parent = parents("bit/tiny")
    run_finetune(_ft(parent, runs, "image_size=32", "train.examples_seen=128"))  # done already: skipped
    df, summary = collect([runs])
    assert parent["run_id"] in set(df.run_id) and summary.finetunes >= 1
    assert df.run_id.nunique() == len(df) and "fine-tune records left out" in summary.line


def test_the_cli_subcommand_is_the_same_entry_point(parents, runs, tmp_path):
    from conftest import run_cli

    parent = parents("bit/tiny")
    proc = run_cli(["-m", "mixer_scaling.cli", "finetune", f"parent={parent['run_id']}", f"runs_dir={runs}", *FT,
                    "image_size=32", "train.examples_seen=128"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = run_cli(["-m", "mixer_scaling.cli", "finetune", f"runs_dir={runs}", "image_size=24"], cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
