"""Parameter and FLOP counts for every registry model.

Convention: one multiply-add = 2 FLOPs, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
over the matrix products and convolutions of one forward pass of one image (the counter ignores
normalisation, activations, bias additions, pooling and softmax, which are a small fraction for
all models here). Models are built and run on the ``meta`` device, so even ViT-H/14 or
BiT-R152x4 cost neither memory nor time.

Attention: timm's ViT calls ``F.scaled_dot_product_attention`` when fused attention is on. On
real CPU tensors the counter (torch 2.x) has no formula for the CPU SDPA kernel and silently
drops ``q·kᵀ`` and ``attn·v``; on ``meta`` it happens to decompose into counted ``bmm``s.
:func:`forward_flops` therefore switches every attention module to timm's explicit
(non-fused) path before counting, which is counted on any device.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from functools import lru_cache
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from mixer_scaling.models.registry import ModelSpec, build_from_spec, get_spec, list_models

__all__ = ["count_model_flops", "count_params", "forward_flops", "mixer_flops", "model_stats", "registry_rows", "STATS_KEYS"]

STATS_KEYS = ("name", "family", "size", "params", "params_backbone", "gflops", "image_size", "patch")


def _classifier(model: nn.Module) -> nn.Module | None:
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        return head if isinstance(head, nn.Module) else None
    return getattr(model, "head", None)


def count_params(model: nn.Module, head: bool = True) -> int:
    """Number of parameters (works on ``meta`` models); ``head=False`` leaves out the classifier."""
    total = sum(p.numel() for p in model.parameters())
    if not head:
        clf = _classifier(model)
        if clf is not None:
            total -= sum(p.numel() for p in clf.parameters())
    return total


def _disable_fused_attention(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def _run_counter(model: nn.Module, image_size: int, in_chans: int = 3) -> FlopCounterMode:
    device = next(model.parameters()).device
    _disable_fused_attention(model)
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter


def count_model_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Forward FLOPs of one ``image_size``² image through ``model``, counted directly (the input is
    created on the model's device, so a ``meta`` model costs no memory). Switches timm attention
    modules to the non-fused path so that attention is counted."""
    return int(_run_counter(model, image_size, in_chans).get_total_flops())


# Depth reduction. Every model here is "fixed parts + stacks of identical blocks" (Mixer and ViT:
# `blocks`; ResNetV2: `stages.i.blocks`, where block 0 of a stage changes the shape and the others
# repeat). Counting a copy with at most two blocks per stack and adding (depth - 2) times the
# second block's FLOPs and parameters is exact and ~10x faster than running ViT-H/14 or
# BiT-R200x3 through the meta device (whose ops go through Python reference implementations).
# A timm family's model has no known stacks (``_stacks`` is empty): it is counted whole.
_DEPTH_KEY = {"mixer": "num_blocks", "vit": "depth", "bit": "layers"}


def _stacks(spec: ModelSpec) -> list[tuple[str, int]]:
    if spec.from_timm:
        return []
    depth = spec.kwargs[_DEPTH_KEY[spec.family]]
    if spec.family == "bit":
        return [(f"stages.{i}.blocks", int(d)) for i, d in enumerate(depth)]
    return [("blocks", int(depth))]


def _reduced(spec: ModelSpec) -> ModelSpec:
    if not _stacks(spec):
        return spec
    depth = spec.kwargs[_DEPTH_KEY[spec.family]]
    short = tuple(min(int(d), 2) for d in depth) if spec.family == "bit" else min(int(depth), 2)
    return dataclasses.replace(spec, kwargs={**spec.kwargs, _DEPTH_KEY[spec.family]: short})


@dataclasses.dataclass(frozen=True)
class _Counts:
    flops: int
    params: int
    params_backbone: int


@lru_cache(maxsize=None)
def _counts(name: str, image_size: int, num_classes: int) -> _Counts:
    spec = get_spec(name)
    stacks = _stacks(spec)
    short = _reduced(spec)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some timm models note that they run on meta
        model = build_from_spec(short, num_classes, image_size)
        counter = _run_counter(model, image_size)
    per_module = counter.get_flop_counts()
    flops = int(counter.get_total_flops())
    params = count_params(model, head=True)
    backbone = count_params(model, head=False)
    prefix = type(model).__name__
    for path, depth in stacks:
        if depth <= 2:
            continue
        key = f"{prefix}.{path}.1"
        if key not in per_module:
            raise RuntimeError(f"flop counter has no entry for {key} (have: {sorted(per_module)[:8]}...)")
        block_params = sum(p.numel() for p in model.get_submodule(f"{path}.1").parameters())
        flops += (depth - 2) * sum(per_module[key].values())
        params += (depth - 2) * block_params
        backbone += (depth - 2) * block_params
    return _Counts(flops=flops, params=params, params_backbone=backbone)


def forward_flops(name: str, image_size: int | None = None, num_classes: int = 1000) -> int:
    """Forward FLOPs per image (multiply-add = 2) of registry model ``name`` (a built-in model or
    ``<family>/<timm model name>``) at ``image_size`` (``None``: its default), with a ``num_classes``
    head; counted with ``FlopCounterMode`` on the meta device (built-in models depth-reduced, see
    above, timm families' whole; equal to :func:`count_model_flops` of the full model, which the
    tests check), a built-in Mixer by :func:`mixer_flops` (equal to the count, tested). Cached per process."""
    spec = get_spec(name)
    size = spec.image_size if image_size is None else int(image_size)
    if spec.family == "mixer" and not spec.from_timm and set(spec.kwargs) == _MIXER_FORMULA_KEYS:
        # equal to the counter (tested), and skips what the counter imports (torch._dynamo, ~1 s at a run's start)
        return mixer_flops(spec, size, num_classes)
    return _counts(name, size, num_classes).flops


# The Mixer spec keys mixer_flops reads: a spec with any other key is counted.
_MIXER_FORMULA_KEYS = {"patch_size", "embed_dim", "tokens_mlp_dim", "channels_mlp_dim", "num_blocks"}


def mixer_flops(spec: ModelSpec | str, image_size: int | None = None, num_classes: int = 1000) -> int:
    """Closed-form forward FLOPs per image of a Mixer, counting what the counter counts.

    With S = (H/P)² tokens, stem ``2·S·(P²·3)·C``; per layer token mixing ``2·2·C·S·D_S`` and
    channel mixing ``2·2·S·C·D_C``; head ``2·C·num_classes``.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec.family != "mixer":
        raise ValueError(f"mixer_flops needs a mixer spec, got {spec.name}")
    size = spec.image_size if image_size is None else image_size
    k = spec.kwargs
    p, c, ds, dc, n = k["patch_size"], k["embed_dim"], k["tokens_mlp_dim"], k["channels_mlp_dim"], k["num_blocks"]
    s = (size // p) ** 2
    stem = 2 * s * (p * p * 3) * c
    layer = 2 * 2 * c * s * ds + 2 * 2 * s * c * dc
    return stem + n * layer + 2 * c * num_classes


@lru_cache(maxsize=None)
def _cached_stats(name: str, num_classes: int) -> dict[str, Any]:
    spec = get_spec(name)
    counts = _counts(name, spec.image_size, num_classes)
    return {
        "name": spec.name,
        "family": spec.family,
        "size": spec.size,
        "params": counts.params,
        "params_backbone": counts.params_backbone,
        "gflops": counts.flops / 1e9,
        "image_size": spec.image_size,
        "patch": spec.patch,
    }


def model_stats(name: str, num_classes: int = 1000) -> dict[str, Any]:
    """``{name, family, size, params, params_backbone, gflops, image_size, patch}`` for ``name`` at
    its default image size; ``params`` includes a ``num_classes`` head, ``params_backbone`` not."""
    return dict(_cached_stats(name, num_classes))


def registry_rows(num_classes: int = 1000) -> list[dict[str, Any]]:
    """:func:`model_stats` for every registry model, in table order (cached per process)."""
    return [copy.copy(_cached_stats(n, num_classes)) for n in list_models()]
