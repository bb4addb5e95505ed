"""Tests of the model zoo: our MLP-Mixer against timm, the registry, the factory's errors, and
the FLOP/parameter counts. Big models are built on the ``meta`` device (no memory, no time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer

from mixer_scaling.errors import ConfigError
from mixer_scaling.models import (
    STATS_KEYS,
    MlpMixer,
    build_model,
    count_params,
    forward_flops,
    get_spec,
    list_models,
    mixer_flops,
    model_stats,
    prelogits,
    registry_rows,
)
from mixer_scaling.models.flops import count_model_flops
from mixer_scaling.models.registry import build_from_spec

REPO = Path(__file__).resolve().parents[1]
CONF_MODEL = REPO / "src" / "mixer_scaling" / "conf" / "model"


def meta_build(name: str, num_classes: int = 1000, **cfg) -> nn.Module:
    with torch.device("meta"):
        return build_model({"name": name, **cfg}, num_classes=num_classes)


def paper_mixer_params(spec, num_classes: int | None) -> int:
    """paper-facts.md closed form: stem P²·3·C + C; per layer 4C + (2·S·D_S + D_S + S) +
    (2·C·D_C + D_C + C); final LN 2C; head C·K + K."""
    k = spec.kwargs
    p, c, ds, dc, n = k["patch_size"], k["embed_dim"], k["tokens_mlp_dim"], k["channels_mlp_dim"], k["num_blocks"]
    s = (spec.image_size // p) ** 2
    total = p * p * 3 * c + c + n * (4 * c + (2 * s * ds + ds + s) + (2 * c * dc + dc + c)) + 2 * c
    return total + (c * num_classes + num_classes if num_classes else 0)


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected", [("mixer/b16", 59_880_472), ("mixer/b32", 60_293_428), ("mixer/l16", 208_196_168)]
)
def test_mixer_param_counts_with_1000_class_head(name, expected):
    model = meta_build(name)
    assert count_params(model) == expected
    assert paper_mixer_params(get_spec(name), 1000) == expected
    assert model_stats(name)["params"] == expected


def test_mixer_h14_param_count_without_head():
    model = meta_build("mixer/h14")
    assert count_params(model, head=False) == 431_069_952
    assert paper_mixer_params(get_spec("mixer/h14"), None) == 431_069_952
    assert model_stats("mixer/h14")["params_backbone"] == 431_069_952
    # the head is C·K + K
    assert count_params(model) - count_params(model, head=False) == 1280 * 1000 + 1000


def test_all_mixers_match_the_paper_closed_form():
    for name in list_models("mixer"):
        spec = get_spec(name)
        assert model_stats(name, num_classes=10)["params"] == paper_mixer_params(spec, 10), name


def test_timm_mixer_state_dicts_have_our_keys_and_shapes():
    for name in list_models("mixer"):
        spec = get_spec(name)
        if spec.timm_name is None:
            continue
        with torch.device("meta"):
            ref = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000)
        ours = meta_build(name)
        ref_sd, our_sd = ref.state_dict(), ours.state_dict()
        assert list(ref_sd) == list(our_sd), name
        assert all(ref_sd[k].shape == our_sd[k].shape for k in ref_sd), name


# ---------------------------------------------------------------------------------------------
# Equivalence with timm's MlpMixer (numerics)
# ---------------------------------------------------------------------------------------------


def _randomise_head(model: nn.Module) -> None:
    # timm and we zero-init the head; random weights make the logits a real comparison.
    nn.init.normal_(model.head.weight, std=1.0)
    nn.init.normal_(model.head.bias, std=1.0)


@pytest.mark.parametrize("name", ["mixer/s32", "mixer/tiny"])
def test_our_mixer_reproduces_timm_logits(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    if spec.timm_name:
        ref = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000)
    else:
        k = spec.kwargs
        ratio = (k["tokens_mlp_dim"] / k["embed_dim"], k["channels_mlp_dim"] / k["embed_dim"])
        ref = TimmMlpMixer(
            num_classes=1000,
            img_size=spec.image_size,
            patch_size=k["patch_size"],
            num_blocks=k["num_blocks"],
            embed_dim=k["embed_dim"],
            mlp_ratio=ratio,
        )
    ref.eval()
    _randomise_head(ref)
    ours = build_model({"name": name}, num_classes=1000).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    tanh = build_model({"name": name, "gelu": "tanh"}, num_classes=1000).eval()
    tanh.load_state_dict(ref.state_dict(), strict=True)

    x = torch.randn(2, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x)
        got = ours(x)
        got_tanh = tanh(x)
        want_pre = ref.forward_head(ref.forward_features(x), pre_logits=True)
        got_pre = prelogits(ours, x)
    assert want.abs().max() > 1.0  # the comparison is not between zeros
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_pre, want_pre, rtol=0, atol=1e-5)
    # the tanh option is live: same weights, visibly different logits
    assert (got_tanh - want).abs().max() > 1e-4


def _timm_twin(ours: nn.Module, name: str) -> nn.Module:
    k = get_spec(name).kwargs
    ratio = (k["tokens_mlp_dim"] / k["embed_dim"], k["channels_mlp_dim"] / k["embed_dim"])
    ref = TimmMlpMixer(num_classes=ours.num_classes, img_size=ours.img_size, patch_size=k["patch_size"],
                       num_blocks=k["num_blocks"], embed_dim=k["embed_dim"], mlp_ratio=ratio)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref


def test_training_step_gradients_match_timm():
    # Our blocks run token-major with fused bias/residual products; loss and every gradient are timm's.
    torch.manual_seed(0)
    ours = build_model({"name": "mixer/tiny"}, num_classes=10)
    _randomise_head(ours)
    ref = _timm_twin(ours, "mixer/tiny")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    losses = {}
    for key, model in (("ours", ours), ("timm", ref)):
        model.train()
        losses[key] = nn.functional.cross_entropy(model(x), y)
        losses[key].backward()
    torch.testing.assert_close(losses["ours"], losses["timm"], rtol=0, atol=1e-5)
    want = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, want[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_dropout_and_drop_path_at_a_vanishing_rate_change_nothing():
    # In training mode the token-major block goes through dropout and stochastic depth (on the batch axis,
    # which is axis 1 there); at a vanishing rate (every sample kept, scale 1 + 1e-9) the output is eval's.
    torch.manual_seed(0)
    plain = MlpMixer(num_classes=5, img_size=16, patch_size=4, num_blocks=2, embed_dim=16, tokens_mlp_dim=8,
                     channels_mlp_dim=32)
    _randomise_head(plain)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = plain.eval()(x)
    for kwargs in ({"drop_path_rate": 1e-9}, {"proj_drop_rate": 1e-9}):
        other = MlpMixer(num_classes=5, img_size=16, patch_size=4, num_blocks=2, embed_dim=16, tokens_mlp_dim=8,
                         channels_mlp_dim=32, **kwargs)
        other.load_state_dict(plain.state_dict())
        with torch.no_grad():
            got = other.train()(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_drop_path_drops_whole_samples_as_timm_does():
    from timm.layers import DropPath as TimmDropPath

    from mixer_scaling.models.mixer import DropPath

    x = torch.randn(7, 6, 5)  # (S, B, C): the batch on axis 1
    ours, ref = DropPath(0.4, batch_dim=1).train(), TimmDropPath(0.4).train()
    torch.manual_seed(3)
    got = ours(x)
    torch.manual_seed(3)
    want = ref(x.transpose(0, 1)).transpose(0, 1)  # timm's batch is axis 0: the same draws, per sample
    torch.testing.assert_close(got, want)
    dropped = (got == 0).all(dim=(0, 2))
    assert 0 < dropped.sum() < 6
    torch.testing.assert_close(got[:, ~dropped], x[:, ~dropped] / 0.6)
    assert repr(ours) == repr(ref) == "DropPath(drop_prob=0.400)"
    assert torch.equal(ours.eval()(x), x)


def test_gelu_option_builds_the_right_activation():
    exact = build_model({"name": "mixer/tiny"}, 10)
    tanh = build_model({"name": "mixer/tiny", "gelu": "tanh"}, 10)
    assert exact.blocks[0].mlp_tokens.act.approximate == "none"
    assert tanh.blocks[0].mlp_channels.act.approximate == "tanh"


# ---------------------------------------------------------------------------------------------
# Mixer behaviour
# ---------------------------------------------------------------------------------------------


def test_fresh_mixer_has_zero_head_and_predicts_uniform_logits():
    torch.manual_seed(0)
    model = build_model({"name": "mixer/tiny"}, 7).eval()
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7) and torch.count_nonzero(out) == 0
    # everything before the head is not trivial
    assert model.stem.proj.weight.std() > 0 and model.blocks[0].mlp_tokens.fc1.weight.std() > 0


def test_reset_classifier_gives_a_zero_head_of_the_new_size():
    model = build_model({"name": "mixer/tiny"}, 10)
    nn.init.normal_(model.head.weight)
    model.reset_classifier(5)
    assert model.head.weight.shape == (5, 128) and model.num_classes == 5
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0


def test_forward_features_is_mean_over_normalised_tokens():
    torch.manual_seed(0)
    model = build_model({"name": "mixer/tiny"}, 10).eval()
    _randomise_head(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_tokens(x)
        feats = model.forward_features(x)
        logits = model(x)
    assert tokens.shape == (2, 64, 128)
    torch.testing.assert_close(feats, tokens.mean(1))
    torch.testing.assert_close(logits, model.head(feats))


def test_token_mixing_is_shared_across_channels_and_channel_mixing_across_tokens():
    block = build_model({"name": "mixer/tiny"}, 10).blocks[0]
    assert block.mlp_tokens.fc1.weight.shape == (64, 64)  # (D_S, S)
    assert block.mlp_channels.fc1.weight.shape == (512, 128)  # (D_C, C)
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6


def test_drop_path_rises_linearly_over_blocks():
    model = meta_build("mixer/s32", drop_path_rate=0.1)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.1 * i / 7 for i in range(8)])
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    # and it is live in train mode only
    torch.manual_seed(0)
    tiny = build_model({"name": "mixer/tiny", "drop_path_rate": 0.5}, 10)
    _randomise_head(tiny)
    x = torch.randn(4, 3, 32, 32)
    tiny.train()
    assert not torch.allclose(tiny(x), tiny(x))
    tiny.eval()
    torch.testing.assert_close(tiny(x), tiny(x))


def test_drop_rates_reach_vit_and_bit():
    vit = build_model({"name": "vit/tiny", "drop_rate": 0.2, "drop_path_rate": 0.1}, 10)
    assert vit.head_drop.p == 0.2
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    bit = build_model({"name": "bit/tiny", "drop_rate": 0.3}, 10)
    assert bit.head.drop.p == 0.3


# ---------------------------------------------------------------------------------------------
# Image sizes and factory errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, feat_dim", [("mixer/tiny", 128), ("vit/tiny", 128), ("bit/tiny", 512)])
def test_non_default_image_size_and_prelogits(name, feat_dim):
    torch.manual_seed(0)
    model = build_model({"name": name}, num_classes=10, image_size=48).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert prelogits(model, x).shape == (2, feat_dim)
    default = build_model({"name": name}, num_classes=10).eval()
    with torch.no_grad():
        assert prelogits(default, torch.randn(3, 3, 32, 32)).shape == (3, feat_dim)


def test_prelogits_are_what_the_head_reads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("mixer/tiny", "vit/tiny"):
        model = build_model({"name": name}, 10).eval()
        _randomise_head(model)
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.head(prelogits(model, x)), msg=name)
    bit = build_model({"name": "bit/tiny"}, 10).eval()
    with torch.no_grad():
        torch.testing.assert_close(prelogits(bit, x), bit.forward_features(x).mean((2, 3)))


def test_built_mixer_rejects_another_image_size():
    model = build_model({"name": "mixer/tiny"}, 10)
    with pytest.raises(ValueError, match="fixed at construction"):
        model(torch.randn(1, 3, 48, 48))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_image_size_not_divisible_by_patch_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        build_model({"name": "mixer/tiny"}, 10, image_size=30)
    msg = _one_line(exc)
    assert "data.image_size=30" in msg and "4" in msg and "mixer/tiny" in msg
    with pytest.raises(ConfigError, match=r"data.image_size=100 .*16 .*vit/b16"):
        build_model({"name": "vit/b16"}, 10, image_size=100)


def test_unknown_name_is_a_config_error_listing_known_models():
    with pytest.raises(ConfigError) as exc:
        build_model({"name": "mixer/x9"}, 10)
    msg = _one_line(exc)
    assert msg.startswith("model.name='mixer/x9' is not a known model; known: ")
    assert all(n in msg for n in list_models())
    with pytest.raises(ConfigError, match="model.name"):
        get_spec("resnet50")
    with pytest.raises(ConfigError, match="model.name is missing"):
        build_model({}, 10)


@pytest.mark.parametrize(
    "cfg, num_classes, pattern",
    [
        ({"name": "mixer/tiny", "gelu": "relu"}, 10, r"model.gelu='relu' .*exact, tanh"),
        ({"name": "vit/tiny", "gelu": "tanh"}, 10, r"model.gelu='tanh' applies to mixer models only"),
        ({"name": "mixer/tiny"}, 0, r"num_classes=0"),
        ({"name": "mixer/tiny"}, True, r"num_classes=True"),
        ({"name": "mixer/tiny", "drop_rate": 1.0}, 10, r"model.drop_rate=1.0 is not allowed; expected a number in \[0, 1\)"),
        ({"name": "bit/tiny", "drop_path_rate": -0.1}, 10, r"model.drop_path_rate=-0.1 is not allowed; expected a number in \[0, 1\)"),
        ({"name": "vit/tiny", "drop_rate": "0.1"}, 10, r"model.drop_rate='0.1'"),
        ({"name": "mixer/b16", "family": "vit"}, 10, r"model.family='vit' does not match model.name='mixer/b16'"),
    ],
)
def test_bad_config_values_are_one_line_config_errors(cfg, num_classes, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        build_model(cfg, num_classes)
    _one_line(exc)


# ---------------------------------------------------------------------------------------------
# BiT and ViT against timm
# ---------------------------------------------------------------------------------------------


def test_bit_r50x1_matches_timm_param_count():
    torch.manual_seed(0)
    ref = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10)
    ours = build_model({"name": "bit/r50x1"}, num_classes=10)
    assert count_params(ours) == count_params(ref) == 23_520_842
    assert [k for k in ours.state_dict()] == [k for k in ref.state_dict()]


@pytest.mark.parametrize("name", ["bit/r152x2", "bit/r101x3", "vit/b16", "vit/h14"])
def test_meta_param_counts_match_timm(name):
    spec = get_spec(name)
    with torch.device("meta"):
        ref = timm.create_model(spec.timm_name, pretrained=False, num_classes=1000)
    assert count_params(meta_build(name)) == count_params(ref)


def test_bit_models_not_in_timm_have_the_right_shape():
    r50x2 = meta_build("bit/r50x2")
    assert r50x2.stem.conv.out_channels == 128 and r50x2.num_features == 4096
    r200x3 = meta_build("bit/r200x3")
    assert [len(s.blocks) for s in r200x3.stages] == [3, 24, 36, 3] and r200x3.num_features == 6144
    r152x1 = meta_build("bit/r152x1")
    assert [len(s.blocks) for s in r152x1.stages] == [3, 8, 36, 3] and r152x1.num_features == 2048


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, image_size", [("mixer/tiny", None), ("mixer/tiny", 64), ("mixer/s32", None), ("mixer/b16", None), ("mixer/h14", 448)])
def test_mixer_flop_formula_equals_the_counter(name, image_size):
    spec = get_spec(name)
    from mixer_scaling.models.flops import _counts  # the counter (forward_flops takes the formula for Mixer)

    assert mixer_flops(spec, image_size) == forward_flops(name, image_size)
    assert mixer_flops(spec, image_size) == _counts(name, image_size or spec.image_size, 1000).flops
    if name in ("mixer/tiny", "mixer/s32"):  # the full model, counted directly, agrees too
        with torch.device("meta"):
            full = build_from_spec(spec, 1000, image_size)
        assert count_model_flops(full, image_size or spec.image_size) == mixer_flops(spec, image_size)


def _vit_flops(spec, num_classes=1000, attention=True):
    k = spec.kwargs
    p, d, depth = k["patch_size"], k["embed_dim"], k["depth"]
    hidden = int(d * k["mlp_ratio"])
    n = (spec.image_size // p) ** 2 + 1  # + class token
    per_layer = 2 * n * d * 3 * d + 2 * n * d * d + 2 * 2 * n * d * hidden
    if attention:
        per_layer += 2 * n * n * d + 2 * n * n * d  # q·kᵀ and attn·v
    embed = 2 * (n - 1) * p * p * 3 * d
    return embed + depth * per_layer + 2 * d * num_classes


@pytest.mark.parametrize("name", ["vit/tiny", "vit/b16", "vit/h14"])
def test_vit_flops_include_attention(name):
    spec = get_spec(name)
    counted = forward_flops(name)
    with_attention, without = _vit_flops(spec), _vit_flops(spec, attention=False)
    assert abs(counted - with_attention) / with_attention < 0.005
    assert abs(counted - without) / without > 0.02  # attention is 4-9% of these models


def test_vit_attention_is_counted_even_on_real_cpu_tensors():
    # On real CPU tensors the fused SDPA kernel is invisible to FlopCounterMode; the counter
    # must switch timm to the explicit attention path.
    torch.manual_seed(0)
    model = build_model({"name": "vit/tiny"}, 1000)
    assert count_model_flops(model, 32) == forward_flops("vit/tiny") == _vit_flops(get_spec("vit/tiny"))


@pytest.mark.parametrize("name", ["vit/s32", "bit/r50x1", "bit/tiny"])
def test_depth_reduced_counts_equal_the_full_model(name):
    spec = get_spec(name)
    with torch.device("meta"):
        full = build_from_spec(spec, 1000)
    stats = model_stats(name)
    assert count_model_flops(full, spec.image_size) == forward_flops(name) == round(stats["gflops"] * 1e9)
    assert count_params(full) == stats["params"]
    assert count_params(full, head=False) == stats["params_backbone"]


def test_registry_rows_cover_every_model_with_the_required_keys():
    rows = registry_rows()
    assert [r["name"] for r in rows] == list_models()
    for row in rows:
        assert tuple(row) == STATS_KEYS
        spec = get_spec(row["name"])
        assert (row["family"], row["size"], row["image_size"], row["patch"]) == (
            spec.family, spec.size, spec.image_size, spec.patch)
        assert isinstance(row["gflops"], float) and row["gflops"] > 0
        assert row["params"] > row["params_backbone"] > 0
    by_name = {r["name"]: r for r in rows}
    assert by_name["mixer/b16"]["params"] == 59_880_472
    # orders of magnitude from the literature: ViT-B/16 17.6 GMACs, BiT-R50x1 4.1 GMACs at 224
    assert by_name["vit/b16"]["gflops"] == pytest.approx(35.1, rel=0.01)
    assert by_name["bit/r50x1"]["gflops"] == pytest.approx(8.2, rel=0.02)
    rows[0]["params"] = -1  # callers get copies
    assert registry_rows()[0]["params"] > 0


def test_registry_has_the_expected_entries():
    names = set(list_models())
    assert {f"mixer/{s}" for s in ("s32", "s16", "b32", "b16", "l32", "l16", "h14", "tiny")} <= names
    assert {f"vit/{w}{p}" for w in ("ti", "s", "b", "l", "h") for p in (32, 16, 14)} | {"vit/tiny"} <= names
    assert {f"bit/{s}" for s in ("r50x1", "r50x2", "r50x3", "r101x1", "r101x3", "r152x1", "r152x2", "r152x4", "r200x3", "tiny")} <= names
    assert {f"{f}/micro" for f in ("mixer", "vit", "bit")} <= names
    assert len(names) == 9 + 17 + 11
    for name in names:
        spec = get_spec(name)
        assert spec.name == f"{spec.family}/{spec.size}"
        assert spec.image_size == (32 if spec.size in ("tiny", "micro") else 224)
        assert (spec.patch is None) == (spec.family == "bit")


@pytest.mark.parametrize("name, lo, hi", [("mixer/tiny", 0.5e6, 1.5e6), ("vit/tiny", 0.5e6, 1.5e6), ("bit/tiny", 0.4e6, 1.5e6),
                                         ("mixer/micro", 0.1e6, 0.4e6), ("vit/micro", 0.1e6, 0.4e6), ("bit/micro", 0.1e6, 0.4e6)])
def test_tiny_models_are_cpu_sized(name, lo, hi):
    stats = model_stats(name, num_classes=10)
    assert lo <= stats["params"] <= hi
    assert stats["gflops"] < 0.25


# ---------------------------------------------------------------------------------------------
# Hydra config files
# ---------------------------------------------------------------------------------------------


def test_one_yaml_per_registry_entry_and_they_agree():
    files = sorted(CONF_MODEL.glob("*/*.yaml"))
    assert sorted(f"{p.parent.name}/{p.stem}" for p in files) == sorted(list_models())
    for path in files:
        cfg = OmegaConf.load(path)
        spec = get_spec(f"{path.parent.name}/{path.stem}")
        assert (cfg.name, cfg.family, cfg.size, cfg.image_size) == (spec.name, spec.family, spec.size, spec.image_size)
        assert cfg.drop_rate == 0.0 and cfg.drop_path_rate == 0.0
        if spec.family == "mixer":
            assert cfg.gelu == "exact"
        else:
            assert "gelu" not in cfg
        assert path.read_text().startswith("# ")


@pytest.mark.parametrize("name", ["mixer/tiny", "vit/tiny", "bit/tiny", "mixer/h14", "bit/r200x3"])
def test_yaml_configs_build(name):
    family, size = name.split("/")
    cfg = OmegaConf.load(CONF_MODEL / family / f"{size}.yaml")
    with torch.device("meta"):
        model = build_model(cfg, num_classes=10, image_size=cfg.image_size)
    assert isinstance(model, MlpMixer) == (family == "mixer")
