"""The schema (src/mixer_scaling/schema.py) is the one place that knows every config key: it covers every
option of every config group, refuses what it does not know, and decides a run's identity."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from mixer_scaling import schema
from mixer_scaling.config import compose, group_options, validate
from mixer_scaling.errors import ConfigError
from mixer_scaling.records import run_id_of


def option_configs():
    """(name, overrides) of one config per option of each group, each sweep, and the fine-tune app."""
    for group in ("model", "data", "train", "fewshot", "wandb"):
        for option in group_options(group):
            extra = ["data.root=/tmp"] if group == "data" and option != "synthetic" else []
            yield f"{group}={option}", [f"{group}={option}", *extra]
    for sweep in group_options("sweep"):
        extra = {"pareto": ["model=mixer/s16", "data.root=/tmp"], "data_scaling": ["model=mixer/b32", "data.root=/tmp"]}
        yield f"+sweep={sweep}", [f"+sweep={sweep}", *extra.get(sweep, [])]


@pytest.mark.parametrize("name, overrides", list(option_configs()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_key_of_every_config_is_declared_and_valid(name, overrides):
    tree = OmegaConf.to_container(compose(overrides), resolve=True)
    schema.check(tree)
    declared = {p for p, _ in schema._flat(tree)}
    assert declared <= set(schema.KEYS), declared - set(schema.KEYS)


def test_the_finetune_config_is_declared_too():
    tree = OmegaConf.to_container(compose(["parent=x", "model=mixer/tiny"], config_name="finetune"), resolve=True)
    schema.check(tree)


@pytest.mark.parametrize("override, message", [
    ("+note=hello", r"^note is not a config key \(declared in"),
    ("+train.lr_peak=1", r"^train.lr_peak is not a config key; keys under train: accum_steps, batch_size, .*lr, "),
    ("eval.throughput_batch_sizes=[-8]", r"^eval.throughput_batch_sizes=\[-8\] is not allowed; expected a non-empty"),
    ("train.betas=[2,3]", r"^train.betas=\[2, 3\] is not allowed; expected two numbers in \[0, 1\)"),
    ("wandb.init_timeout=0", r"^wandb.init_timeout=0 is not allowed; expected a finite number > 0$"),
    ("data.nuisance=2", r"^data.nuisance=2 is not allowed; expected a number in \[0, 1\]"),
    ("device=gpu", r"^device='gpu' is not allowed; expected auto, cpu, cuda or cuda:N$"),
    ("fewshot.l2_reg=nan", r"^fewshot.l2_reg=nan is not allowed; expected a finite number > 0"),
    ("train.compile=sometimes", r"^train.compile='sometimes' is not allowed; expected true or false$"),
    ("train.tf32=1", r"^train.tf32=1 is not allowed; expected true or false$"),
    ("train.channels_last=on", r"^train.channels_last='on' is not allowed; choose one of: auto, true, false$"),
])
def test_a_value_outside_the_schema_is_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate(compose([override]))
    assert "\n" not in str(info.value)


def test_a_key_of_another_data_set_is_ignored_unless_it_would_change_results():
    """A sweep written for the embedded data (data.size, data.val_size) reused on CIFAR: those keys are not
    used there, so they are neither checked nor identity; a knob that changes results is refused."""
    cifar = ["data=cifar10", "data.root=/tmp"]
    with_size = OmegaConf.to_container(compose([*cifar, "+data.size=1000"]), resolve=True)
    schema.check(with_size)
    assert schema.unused(with_size) == ["data.size"]
    assert run_id_of(with_size) == run_id_of(compose(cifar))
    with pytest.raises(ConfigError, match=r"^data.nuisance=0.5 is not allowed with data.name=cifar10; it is a key "
                                          r"of data=synthetic$"):
        schema.check(OmegaConf.to_container(compose([*cifar, "+data.nuisance=0.5"]), resolve=True))


def test_evaluation_settings_and_the_device_are_not_identity():
    base = run_id_of(compose([]))
    for override in ["fewshot.datasets=[digits]", "fewshot.shots=[5]", "fewshot.seeds=[0]", "fewshot.l2_reg=1.0",
                     "eval.batch_size=7", "eval.throughput_batch_sizes=[1]", "eval.throughput_repeats=9",
                     "device=cpu", "wandb.mode=disabled", "train.log_every=3", "study=other", "progress=false"]:
        assert run_id_of(compose([override])) == base, override
    for override in ["train.eval_every_examples=3200", "train.precision=fp32", "data.seed=1", "train.warmup_steps=3"]:
        assert run_id_of(compose([override])) != base, override


@pytest.mark.parametrize("key", [k for k in schema.KEYS_LIST if k.neutral is not schema._ABSENT],
                         ids=lambda k: k.path)
def test_a_key_added_later_at_its_neutral_value_keeps_existing_ids(key):
    """A config written before the key existed (the key absent) and one with the key at its neutral value
    have one run id; any other value is another run."""
    tree = OmegaConf.to_container(compose(["model=mixer/tiny"]), resolve=True)
    group, leaf = key.path.split(".")
    tree[group][leaf] = key.neutral
    before = copy.deepcopy(tree)
    for path in (key.path, *key.companions):
        before[group].pop(path.split(".")[1], None)
    assert run_id_of(tree) == run_id_of(before)
    used = {"model.token_groups": 2, "data.nuisance": 0.5, "data.permutation": "global"}[key.path]
    tree[group][leaf] = used
    assert run_id_of(tree) != run_id_of(before)


def test_the_schema_bounds_follow_the_code_that_owns_them():
    from mixer_scaling.data.build import MAX_SYNTHETIC_CLASSES

    assert schema.KEYS["data.num_classes"].type.holds(MAX_SYNTHETIC_CLASSES)
    assert not schema.KEYS["data.num_classes"].type.holds(MAX_SYNTHETIC_CLASSES + 1)
