"""Tests of untied token mixing (paper App. A ablation): ``MlpMixer(token_groups=G)`` gives each of
G contiguous channel groups its own token-mixing MLP."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from mixer_scaling.errors import ConfigError
from mixer_scaling.models import GroupedLinear, MlpMixer, count_params, get_spec, mixer_flops
from mixer_scaling.models.flops import count_model_flops

SMALL = dict(img_size=16, patch_size=4, num_blocks=2, embed_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32)
C, S, D_S = 16, 16, 8


def small_mixer(token_groups: int = 1, seed: int = 0) -> MlpMixer:
    torch.manual_seed(seed)
    model = MlpMixer(num_classes=5, token_groups=token_groups, **SMALL).double().eval()
    with torch.no_grad():
        model.head.weight.normal_()  # the head is zero-initialised
    return model


def untie(tied: MlpMixer, groups: int) -> MlpMixer:
    """An untied copy of ``tied`` whose G token MLPs all start as ``tied``'s."""
    untied = small_mixer(groups, seed=1)
    sd = tied.state_dict()
    for key, value in sd.items():
        if ".mlp_tokens." in key:
            sd[key] = value.expand(groups, *value.shape).clone()
    untied.load_state_dict(sd, strict=True)
    return untied


def test_one_group_is_the_tied_mixer_bit_for_bit():
    default, one = small_mixer(), small_mixer(token_groups=1)
    assert isinstance(one.blocks[0].mlp_tokens.fc1, torch.nn.Linear)
    sd_default, sd_one = default.state_dict(), one.state_dict()
    assert list(sd_default) == list(sd_one)
    assert all(torch.equal(sd_default[k], sd_one[k]) for k in sd_default)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(default(x), one(x))


@pytest.mark.parametrize("groups", [4, C])
def test_identical_groups_give_the_tied_output(groups):
    tied = small_mixer()
    untied = untie(tied, groups)
    assert untied.blocks[1].mlp_tokens.fc2.weight.shape == (groups, S, D_S)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = tied(x)
        got = untied(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    with torch.no_grad():  # and the groups are live: changing one group changes the output
        untied.blocks[0].mlp_tokens.fc1.weight[0].add_(0.5)
        assert (untied(x) - want).abs().max() > 1e-3


def test_grouped_linear_is_one_linear_per_contiguous_group_of_rows():
    torch.manual_seed(0)
    layer = GroupedLinear(4, in_features=S, out_features=D_S)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(3, C, S)  # (B, channels, tokens): rows are channels
    rows = C // 4
    want = torch.cat([F.linear(x[:, g * rows:(g + 1) * rows], layer.weight[g], layer.bias[g]) for g in range(4)], dim=1)
    torch.testing.assert_close(layer(x), want)


def test_untied_params_follow_the_closed_form_and_flops_do_not_change():
    spec = get_spec("mixer/micro")
    k = spec.kwargs
    p, c, ds, dc, n = k["patch_size"], k["embed_dim"], k["tokens_mlp_dim"], k["channels_mlp_dim"], k["num_blocks"]
    s = (spec.image_size // p) ** 2
    for groups in (1, 2, c):
        with torch.device("meta"):
            model = MlpMixer(num_classes=10, img_size=spec.image_size, token_groups=groups, **k)
        token_mlp = groups * (2 * s * ds + ds + s)
        closed = p * p * 3 * c + c + n * (4 * c + token_mlp + (2 * c * dc + dc + c)) + 2 * c + c * 10 + 10
        assert count_params(model) == closed, groups
        assert count_model_flops(model, spec.image_size) == mixer_flops(spec, num_classes=10), groups


def test_untied_init_is_xavier_per_group():
    torch.manual_seed(0)
    model = MlpMixer(num_classes=5, token_groups=C, **SMALL)
    w = model.blocks[0].mlp_tokens.fc1.weight  # (G, D_S, S)
    bound = math.sqrt(6.0 / (S + D_S))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert not torch.equal(w[0], w[1])  # independent draws
    assert model.blocks[0].mlp_tokens.fc1.bias.abs().max() < 1e-4


def test_untied_forward_backward_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = MlpMixer(num_classes=5, token_groups=4, drop_path_rate=0.1, **SMALL)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(4, 3, 16, 16)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.blocks[0].mlp_tokens.fc1.weight.grad.abs().sum() > 0
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = MlpMixer(num_classes=5, **model.build_kwargs)
    loaded.load_state_dict(torch.load(buf), strict=True)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("groups", [0, -1, 3, 32, 2.0, True])
def test_bad_group_count_is_a_one_line_config_error(groups):
    with pytest.raises(ConfigError) as exc:
        MlpMixer(token_groups=groups, **SMALL)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f"token_groups={groups!r}" in msg and "embed_dim=16" in msg and "allowed: a divisor of 16" in msg


# ---------------------------------------------------------------------------------------------
# Through the config: model.token_groups=G in any run or sweep
# ---------------------------------------------------------------------------------------------


def test_token_groups_from_the_config_build_an_untied_mixer_with_its_own_run_id():
    from mixer_scaling.config import compose, validate
    from mixer_scaling.models import build_model, count_params
    from mixer_scaling.records import identity, run_id_of

    tied_cfg, untied_cfg = compose(["model=mixer/tiny"]), compose(["model=mixer/tiny", "model.token_groups=4"])
    validate(untied_cfg)
    tied, untied = (build_model(c.model, num_classes=10, image_size=32) for c in (tied_cfg, untied_cfg))
    s, d_s, layers = 64, 64, 4  # tiny at 32px: 8x8 tokens, D_S 64, 4 blocks
    assert count_params(untied) - count_params(tied) == layers * 3 * (2 * s * d_s + d_s + s)
    assert run_id_of(untied_cfg) != run_id_of(tied_cfg)
    assert "token_groups" not in identity(tied_cfg)["model"]  # tied runs keep their earlier ids


@pytest.mark.parametrize("overrides, needle", [
    (["model=mixer/tiny", "model.token_groups=3"], "model.token_groups=3"),
    (["model=mixer/tiny", "model.token_groups=0"], "model.token_groups=0 is not allowed; expected an integer > 0 dividing"),
    (["model=bit/tiny", "+model.token_groups=2"], "mixer models only"),
])
def test_bad_token_groups_are_one_line(overrides, needle):
    from mixer_scaling.config import compose, validate

    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    assert needle in str(info.value) and "\n" not in str(info.value)
