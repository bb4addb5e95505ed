"""Initialise a fine-tune at a higher resolution than pre-training (paper App. C).

Mixer's token-mixing MLP has weights of shape ``(D_S, S)``, so a model pre-trained with S tokens
cannot read K² · S of them. For an integer K the paper builds a model with S' = K²·S tokens and
D_S' = K²·D_S hidden units whose token-mixing W1, W2 are block-diagonal with K² copies of the
pre-trained ones (biases tiled K² times) and whose tokens are ordered part-major over the K×K
parts of the image (:class:`~mixer_scaling.models.mixer.MlpMixer` with ``token_parts=K``). At
initialisation every part is then mixed exactly as the pre-trained model mixed a whole image;
fine-tuning may then learn to mix across parts. No official code does this.

ViT interpolates its position embeddings instead (:func:`resample_vit_pos_embed`). BiT is
convolutional and loads at any resolution unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from mixer_scaling.errors import ConfigError
from mixer_scaling.models.mixer import MlpMixer, is_positive_int

__all__ = ["expand_state_dict", "expand_token_mixing", "finetune_factor", "resample_vit_pos_embed"]

_TOKEN_MLP_KEY = re.compile(r"^blocks\.\d+\.mlp_tokens\.fc[12]\.(weight|bias)$")


def _check_factor(factor: Any) -> int:
    if not is_positive_int(factor):
        raise ConfigError(
            f"factor={factor!r} is not allowed; allowed: an integer K >= 1 (the fine-tuning image side is K times "
            f"the pre-training side)"
        )
    return int(factor)


def _sides(size: Any) -> tuple[Any, Any]:
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def finetune_factor(pretrain_size: int | tuple[int, int], finetune_size: int | tuple[int, int]) -> int:
    """The integer K with ``finetune_size = K · pretrain_size`` (ints or ``(H, W)``), else :class:`ConfigError`."""
    old, new = _sides(pretrain_size), _sides(finetune_size)
    sides = (*old, *new)
    if (len(sides) != 4 or not all(map(is_positive_int, sides))
            or new[0] % old[0] or new[1] % old[1] or new[0] * old[1] != new[1] * old[0]):
        raise ConfigError(
            f"image_size={finetune_size!r} is not K times the pre-training size {pretrain_size!r}; allowed: "
            f"K·{pretrain_size!r} for an integer K >= 1"
        )
    return int(new[0] // old[0])


def _block_diag(weight: torch.Tensor, copies: int) -> torch.Tensor:
    """``(..., out, in)`` → ``(..., copies·out, copies·in)``, block-diagonal with ``copies`` copies
    of ``weight`` (leading axes, e.g. untied token groups, are kept)."""
    eye = torch.eye(copies, dtype=weight.dtype, device=weight.device)
    out_f, in_f = weight.shape[-2:]
    blocks = torch.einsum("pq,...oi->...poqi", eye, weight)
    return blocks.reshape(*weight.shape[:-2], copies * out_f, copies * in_f)


def expand_state_dict(state_dict: Mapping[str, torch.Tensor], factor: int) -> dict[str, torch.Tensor]:
    """A Mixer state dict for K = ``factor`` times the image side: every token-mixing weight made
    block-diagonal with K² copies and every token-mixing bias tiled K² times; the other entries
    are the same tensors.

    Load the result into an :class:`MlpMixer` with ``img_size`` K times, ``tokens_mlp_dim`` K² times
    the original and ``token_parts=K`` (what :func:`expand_token_mixing` does).
    """
    copies = _check_factor(factor) ** 2
    out = {}
    for key, value in state_dict.items():
        match = _TOKEN_MLP_KEY.match(key)
        if match is None:
            out[key] = value
        elif match.group(1) == "weight":
            out[key] = _block_diag(value, copies)
        else:
            out[key] = value.tile(copies)
    return out


def expand_token_mixing(model: nn.Module, factor: int) -> MlpMixer:
    """A new :class:`MlpMixer` for images ``factor`` (K) times the side of ``model``'s, initialised
    as in paper App. C (see the module docstring), on ``model``'s device, dtype and train mode.

    Its per-token features on a big image equal, part by part, ``model``'s on each of the K×K parts,
    so its pooled features (and logits) are the mean over parts of ``model``'s. K = 1 gives a copy.
    """
    if not isinstance(model, MlpMixer):
        raise ConfigError(
            f"expand_token_mixing got a {type(model).__name__}; allowed: an MlpMixer (ViT: resample_vit_pos_embed; "
            f"BiT needs no change)"
        )
    k = _check_factor(factor)
    kwargs = dict(model.build_kwargs)
    if kwargs["token_parts"] != 1:
        raise ConfigError(
            f"the model already has token_parts={kwargs['token_parts']}; allowed: a model with token_parts=1 "
            f"(expand the pre-trained model once, by the total factor)"
        )
    h, w = kwargs["img_size"]
    kwargs.update(img_size=(k * h, k * w), tokens_mlp_dim=k * k * kwargs["tokens_mlp_dim"], token_parts=k)
    ref = model.norm.weight
    with torch.device(ref.device):
        expanded = MlpMixer(num_classes=model.num_classes, **kwargs).to(ref.dtype)
    expanded.load_state_dict(expand_state_dict(model.state_dict(), k))
    return expanded.train(model.training)


def resample_vit_pos_embed(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a timm ViT ``state_dict`` (pre-trained at any resolution with a square patch grid)
    whose ``pos_embed`` is resampled (bicubic, timm's ``resample_abs_pos_embed``) to the patch
    grid of ``model``, a ViT built at the fine-tuning resolution; prefix (class) tokens keep theirs.
    """
    if not hasattr(model, "pos_embed") or not hasattr(model, "patch_embed"):
        raise ConfigError(
            f"resample_vit_pos_embed got a {type(model).__name__}; allowed: a timm VisionTransformer "
            f"(Mixer: expand_token_mixing; BiT needs no change)"
        )
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    out = dict(state_dict)
    from timm.layers import resample_abs_pos_embed  # here: importing timm costs ~2 s a launcher never needs

    out["pos_embed"] = resample_abs_pos_embed(
        state_dict["pos_embed"], new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
    )
    return out
