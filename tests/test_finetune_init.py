"""Tests of the higher-resolution fine-tuning inits (paper App. C): Mixer's block-diagonal
token-mixing expansion with part-major tokens, and ViT's resampled position embeddings."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from mixer_scaling.errors import ConfigError
from mixer_scaling.models import (
    MlpMixer,
    build_model,
    count_params,
    expand_state_dict,
    expand_token_mixing,
    finetune_factor,
    get_spec,
    mixer_flops,
    resample_vit_pos_embed,
)
from mixer_scaling.models.flops import count_model_flops

SMALL = dict(patch_size=4, num_blocks=2, embed_dim=16, tokens_mlp_dim=8, channels_mlp_dim=32)


def small_mixer(img_size=16, token_groups: int = 1, seed: int = 0) -> MlpMixer:
    """A float64 Mixer in eval mode with every parameter random (biases, norms and head included),
    so that no part of the identities below holds trivially."""
    torch.manual_seed(seed)
    model = MlpMixer(num_classes=5, img_size=img_size, token_groups=token_groups, **SMALL).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(mean=1.0 if "norm" in name and name.endswith("weight") else 0.0, std=0.3)
    return model


def parts_of(images: torch.Tensor, k: int) -> list[torch.Tensor]:
    """The K×K equal parts of ``images``, row-major (the order ``token_parts=K`` uses)."""
    h, w = images.shape[-2] // k, images.shape[-1] // k
    return [images[..., r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(k) for c in range(k)]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
# Mixer: the expanded model computes the pre-trained model part by part
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
def test_expanded_token_mlp_is_the_old_one_on_each_part(k):
    model = small_mixer()
    big = expand_token_mixing(model, k)
    s = model.num_tokens
    assert big.num_tokens == k * k * s
    old, new = model.blocks[0].mlp_tokens, big.blocks[0].mlp_tokens
    assert new.fc1.weight.shape == (k * k * 8, k * k * s) and new.fc2.weight.shape == (k * k * s, k * k * 8)
    x = torch.randn(3, 16, k * k * s, dtype=torch.float64)  # (B, C, S') as the block feeds it
    with torch.no_grad():
        want = torch.cat([old(x[..., p * s:(p + 1) * s]) for p in range(k * k)], dim=-1)
        got = new(x)
    assert (got - want).abs().max() <= 1e-6


def test_stem_orders_tokens_part_major():
    model = small_mixer()
    big = expand_token_mixing(model, 2)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want = torch.cat([model.stem(part) for part in parts_of(x, 2)], dim=1)
        got = big.stem(x)
        raster = big.stem.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # the same tokens as the row-major order, permuted: part (0, 1) starts at grid column 4
    torch.testing.assert_close(got[:, 16], raster[:, 4], rtol=0, atol=0)
    assert not torch.equal(got, raster)


@pytest.mark.parametrize("k, img_size, token_groups", [(2, 16, 1), (3, 16, 1), (2, (8, 16), 1), (2, 16, 4)])
def test_expanded_model_features_are_the_old_models_features_per_part(k, img_size, token_groups):
    """Token mixing is block-diagonal over parts and LayerNorm and channel mixing act per token, so
    the expanded model's tokens on a big image are the old model's tokens on each part, in part
    order; pooled features and logits are therefore the mean over parts of the old model's."""
    model = small_mixer(img_size, token_groups)
    big = expand_token_mixing(model, k)
    h, w = model.img_size
    x = torch.randn(2, 3, k * h, k * w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    parts = parts_of(x, k)
    with torch.no_grad():
        want_tokens = torch.cat([model.forward_tokens(p) for p in parts], dim=1)
        want_pooled = torch.stack([model.forward_features(p) for p in parts]).mean(0)
        want_logits = torch.stack([model(p) for p in parts]).mean(0)
        got_tokens, got_pooled, got_logits = big.forward_tokens(x), big.forward_features(x), big(x)
    assert want_logits.abs().max() > 0.1  # not a comparison of zeros
    assert (got_tokens - want_tokens).abs().max() <= 1e-5
    assert (got_pooled - want_pooled).abs().max() <= 1e-5
    assert (got_logits - want_logits).abs().max() <= 1e-5


def test_expanded_model_keeps_everything_but_token_mixing():
    model = small_mixer()
    model.train()
    big = expand_token_mixing(model, 2)
    assert big.training and big.num_classes == 5 and big.stem.parts == 2
    assert big.norm.weight.dtype == torch.float64
    old_sd, new_sd = model.state_dict(), big.state_dict()
    assert list(old_sd) == list(new_sd)
    for key, value in old_sd.items():
        if ".mlp_tokens." not in key:
            assert torch.equal(new_sd[key], value), key
    b1 = new_sd["blocks.1.mlp_tokens.fc1.bias"]
    assert torch.equal(b1, old_sd["blocks.1.mlp_tokens.fc1.bias"].repeat(4))
    w2 = new_sd["blocks.1.mlp_tokens.fc2.weight"]
    assert torch.equal(w2, torch.block_diag(*[old_sd["blocks.1.mlp_tokens.fc2.weight"]] * 4))


def test_factor_one_is_the_identity():
    model = small_mixer()
    same = expand_token_mixing(model, 1)
    assert same is not model and same.img_size == model.img_size
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


@pytest.mark.parametrize("factor", [1.5, 2.0, 0, -2, True, "2"])
def test_bad_factor_is_a_one_line_config_error(factor):
    with pytest.raises(ConfigError) as exc:
        expand_token_mixing(small_mixer(), factor)
    msg = _one_line(exc)
    assert f"factor={factor!r}" in msg and "allowed: an integer K >= 1" in msg
    with pytest.raises(ConfigError, match="factor="):
        expand_state_dict(small_mixer().state_dict(), factor)


def test_models_that_cannot_be_expanded_are_config_errors():
    vit = build_model({"name": "vit/micro"}, 10)
    with pytest.raises(ConfigError) as exc:
        expand_token_mixing(vit, 2)
    assert "VisionTransformer" in _one_line(exc) and "allowed: an MlpMixer" in str(exc.value)
    twice = expand_token_mixing(small_mixer(), 2)
    with pytest.raises(ConfigError, match="already has token_parts=2"):
        expand_token_mixing(twice, 2)


@pytest.mark.parametrize("old, new, k", [(224, 448, 2), (224, 224, 1), (32, 96, 3), ((8, 16), (16, 32), 2)])
def test_finetune_factor(old, new, k):
    assert finetune_factor(old, new) == k


@pytest.mark.parametrize("old, new", [(224, 300), (224, 112), (224, 336.0), ((8, 16), (16, 16)), (224, 0), (1.5, 3)])
def test_finetune_factor_rejects_sizes_without_an_integer_factor(old, new):
    with pytest.raises(ConfigError) as exc:
        finetune_factor(old, new)
    assert f"image_size={new!r}" in _one_line(exc) and "for an integer K >= 1" in str(exc.value)


@pytest.mark.parametrize("token_parts", [3, 0, 1.0])
def test_token_parts_must_divide_the_grid(token_parts):
    with pytest.raises(ConfigError) as exc:
        MlpMixer(img_size=16, token_parts=token_parts, **SMALL)
    assert f"token_parts={token_parts!r}" in _one_line(exc) and "4x4" in str(exc.value)


def test_expanded_params_and_flops_match_the_closed_forms():
    spec = get_spec("mixer/micro")
    with torch.device("meta"):
        model = build_model({"name": spec.name}, num_classes=10)
        big = expand_token_mixing(model, 2)
    k = spec.kwargs
    p, c, dc, n = k["patch_size"], k["embed_dim"], k["channels_mlp_dim"], k["num_blocks"]
    s, ds = 4 * (32 // p) ** 2, 4 * k["tokens_mlp_dim"]  # S' = K²·S, D_S' = K²·D_S
    closed = p * p * 3 * c + c + n * (4 * c + (2 * s * ds + ds + s) + (2 * c * dc + dc + c)) + 2 * c + c * 10 + 10
    assert count_params(big) == closed
    wide = dataclasses.replace(spec, kwargs={**k, "tokens_mlp_dim": ds})
    assert count_model_flops(big, 64) == mixer_flops(wide, 64, num_classes=10)


def test_expanded_model_state_dict_round_trip():
    big = expand_token_mixing(small_mixer(), 2)
    buf = io.BytesIO()
    torch.save(big.state_dict(), buf)
    buf.seek(0)
    loaded = MlpMixer(num_classes=big.num_classes, **big.build_kwargs).double().eval()
    loaded.load_state_dict(torch.load(buf), strict=True)
    assert loaded.stem.parts == 2 and loaded.num_tokens == 64
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x), big(x))


# ---------------------------------------------------------------------------------------------
# ViT: position embeddings resampled to the new grid; BiT loads unchanged
# ---------------------------------------------------------------------------------------------


def test_vit_pos_embed_is_resampled_to_the_new_grid():
    torch.manual_seed(0)
    small = build_model({"name": "vit/micro"}, 10)  # 32px, patch 4: 8x8 grid + class token
    big = build_model({"name": "vit/micro"}, 10, image_size=64).eval()
    sd = small.state_dict()
    # constant per channel over the grid: bicubic resampling must keep it
    sd["pos_embed"] = torch.cat([torch.randn(1, 1, 64), torch.randn(1, 1, 64).expand(1, 64, 64)], dim=1)
    resized = resample_vit_pos_embed(sd, big)
    assert resized["pos_embed"].shape == (1, 1 + 16 * 16, 64)
    assert sd["pos_embed"].shape == (1, 65, 64)  # the input is left alone
    torch.testing.assert_close(resized["pos_embed"][:, 0], sd["pos_embed"][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(resized["pos_embed"][:, 1:], sd["pos_embed"][:, 1:2].expand(1, 256, 64))
    big.load_state_dict(resized, strict=True)
    with torch.no_grad():
        assert big(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert resample_vit_pos_embed(sd, small)["pos_embed"] is sd["pos_embed"]  # same grid: unchanged


def test_vit_resampling_rejects_other_models_and_bit_loads_at_any_size():
    with pytest.raises(ConfigError, match="allowed: a timm VisionTransformer") as exc:
        resample_vit_pos_embed({}, small_mixer())
    _one_line(exc)
    bit = build_model({"name": "bit/micro"}, 10)
    build_model({"name": "bit/micro"}, 10, image_size=64).load_state_dict(bit.state_dict(), strict=True)
