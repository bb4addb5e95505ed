"""Every config composes and validates: each model, data set and recipe, as a user would select it."""

import pytest

from mixer_scaling.config import compose, expand, group_options, validate
from mixer_scaling.errors import ConfigError
from mixer_scaling.models import get_spec, list_models


def test_config_groups_mirror_the_registry():
    # one config per built-in model, and `timm` for any timm model (model.name=<family>/<timm model name>)
    assert group_options("model") == sorted([*list_models(), "timm"])


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_config_composes_and_validates(model):
    cfg = compose([f"model={model}"])
    validate(cfg)
    spec = get_spec(cfg.model.name)
    assert cfg.model.name == (model if model != "timm" else "convnext/convnext_atto")
    assert spec.family == (cfg.model.family or cfg.model.name.split("/")[0])
    assert cfg.data.image_size == spec.image_size  # data follows the model's default resolution


@pytest.mark.parametrize("recipe", group_options("train"))
def test_every_recipe_composes_and_validates(recipe):
    validate(compose([f"train={recipe}"]))


@pytest.mark.parametrize("data", group_options("data"))
def test_every_data_config_composes(data, tmp_path):
    overrides = [f"data={data}"]
    if data != "synthetic":
        overrides.append(f"data.root={tmp_path}")
    cfg = compose(overrides)
    assert cfg.data.name == data and 0 < cfg.data.fraction <= 1


def test_paper_recipe_matches_the_paper():
    t = compose(["train=jft"]).train
    assert (t.batch_size, t.warmup_steps, t.weight_decay, t.grad_clip, list(t.betas)) == (4096, 10000, 0.03, 1.0, [0.9, 0.999])
    assert t.schedule == "linear" and t.optimizer == "adamw"


def test_sweep_expansion():
    cells = expand(["model=mixer/tiny,vit/tiny", "data.fraction=0.1,1.0", "seed=0"])
    assert len(cells) == 4 and ["model=vit/tiny", "data.fraction=0.1", "seed=0"] in cells


def test_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"^seed=-1 is not allowed"):
        validate(compose(["seed=-1"]))
    with pytest.raises(ConfigError, match=r"train.optimizer='rmsprop'"):
        validate(compose(["train.optimizer=rmsprop"]))
