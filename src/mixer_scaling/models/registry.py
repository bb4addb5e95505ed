"""One table of every model this project trains, and the one factory that builds them.

Names are ``<family>/<size>`` and equal the Hydra option of the ``model`` config group
(``model=mixer/b16`` loads ``conf/model/mixer/b16.yaml``):

* ``mixer/{s32,s16,b32,b16,l32,l16,h14}``: paper Table 1, built with our :class:`MlpMixer`.
* ``vit/{ti,s,b,l,h}{32,16,14}``: timm's ``VisionTransformer`` with the ViT paper's widths
  (class token, learned position embeddings, mlp ratio 4, timm defaults otherwise).
* ``bit/{r50x1,r50x2,r50x3,r101x1,r101x3,r152x1,r152x2,r152x4,r200x3}``: timm's ``ResNetV2`` as
  timm's ``resnetv2_*_bit`` builds it (pre-activation, GroupNorm(32), weight-standardised convs
  with eps 1e-8, BiT's "fixed" padded max-pool stem).
* ``<family>/{tiny,micro}``: ~1M- and ~0.2M-parameter members of each family for 32×32 images
  (CIFAR) that train on a couple of CPU cores.
* ``<label>/<timm model name>``, e.g. ``convnext/convnext_atto``: any timm model, randomly initialised
  by ``timm.create_model``, in the family ``<label>`` (any lowercase identifier other than the three
  above; :mod:`.families` holds the registered ones). Its spec is made on first use (:func:`get_spec`):
  default resolution from timm's ``pretrained_cfg``, patch size from its patch embedding, if any.

``build_model`` validates its config and raises :class:`ConfigError` (one line) on bad input.
``prelogits`` returns the frozen features few-shot evaluation uses, for every family.
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import torch
import torch.nn as nn

from mixer_scaling.errors import ConfigError
from mixer_scaling.models.families import (
    BUILTIN,
    LABEL,
    check_label,
    get_family,
    is_convolutional,
)
from mixer_scaling.models.mixer import GELU_KINDS, MlpMixer

__all__ = ["FAMILIES", "ModelSpec", "build_from_spec", "build_model", "get_spec", "is_convolutional", "list_models",
           "prelogits"]

#: The built-in families (the registry's own table); every other family label is a timm family.
FAMILIES = BUILTIN


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    ``kwargs`` are the architecture arguments of the family's builder (without ``num_classes``,
    image size and regularisation, which :func:`build_model` adds). ``patch`` is ``None`` for
    BiT; ``image_size`` is the default resolution (224 for paper sizes, 32 for the CPU sizes).
    ``timm_name`` names timm's registered model with the same architecture where one exists.
    ``from_timm``: a timm family's model, built by ``timm.create_model(timm_name)``; its ``kwargs`` hold
    only ``fixed_input_size`` (timm's pretrained_cfg: the model is built for each resolution).
    """

    name: str
    family: str
    size: str
    patch: int | None
    image_size: int
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timm_name: str | None = None
    description: str = ""
    from_timm: bool = False


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

# Paper Table 1: (layers, C, D_S, D_C). Patch sizes come from the name.
_MIXER_DIMS = {
    "s": (8, 512, 256, 2048),
    "b": (12, 768, 384, 3072),
    "l": (24, 1024, 512, 4096),
    "h": (32, 1280, 640, 5120),
}
_MIXER_SIZES = ("s32", "s16", "b32", "b16", "l32", "l16", "h14")
_MIXER_TIMM = {s: f"mixer_{s}_224" for s in ("s32", "s16", "b32", "b16", "l32", "l16")}

# ViT paper Table 1 (+ DeiT's Ti): (width, depth, heads); mlp ratio 4.
_VIT_DIMS = {
    "ti": (192, 12, 3),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
    "h": (1280, 32, 16),
}
_VIT_TIMM_WIDTH = {"ti": "tiny", "s": "small", "b": "base", "l": "large", "h": "huge"}
# timm's registered plain ViTs with exactly these dims (checked against timm 1.0).
_VIT_TIMM = {
    "ti16": "vit_tiny_patch16_224",
    "s32": "vit_small_patch32_224",
    "s16": "vit_small_patch16_224",
    "b32": "vit_base_patch32_224",
    "b16": "vit_base_patch16_224",
    "l32": "vit_large_patch32_224",
    "l16": "vit_large_patch16_224",
    "l14": "vit_large_patch14_224",
    "h14": "vit_huge_patch14_224",
}

# BiT: depth → blocks per stage; the width factor comes from the name.
_BIT_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
_BIT_SIZES = ("r50x1", "r50x2", "r50x3", "r101x1", "r101x3", "r152x1", "r152x2", "r152x4", "r200x3")
_BIT_TIMM = {s: f"resnetv2_{s[1:]}_bit" for s in ("r50x1", "r50x3", "r101x1", "r101x3", "r152x2", "r152x4")}

# The CPU-sized members, for 32×32 inputs: ``tiny`` (~0.6M parameters) and ``micro`` (about a
# quarter of tiny's compute), so a laptop-sized sweep still has two sizes per family.
CPU_SIZES = ("micro", "tiny")
CPU_MIXER = {
    "tiny": dict(patch_size=4, num_blocks=4, embed_dim=128, tokens_mlp_dim=64, channels_mlp_dim=512),
    "micro": dict(patch_size=4, num_blocks=4, embed_dim=64, tokens_mlp_dim=32, channels_mlp_dim=256),
}
CPU_VIT = {
    "tiny": dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0),
    "micro": dict(patch_size=4, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0),
}
# BiT's GroupNorm(32) needs bottleneck widths (channels / 4) of at least 32: tiny has three stages of
# one block; micro drops the last (widest) stage rather than going below that width.
CPU_BIT = {
    "tiny": dict(layers=(1, 1, 1), channels=(128, 256, 512), stem_chs=32, width_factor=1),
    "micro": dict(layers=(1, 1), channels=(128, 256), stem_chs=32, width_factor=1),
}


def _make_table() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for size in _MIXER_SIZES:
        depth, c, ds, dc = _MIXER_DIMS[size[0]]
        patch = int(size[1:])
        specs.append(
            ModelSpec(
                name=f"mixer/{size}",
                family="mixer",
                size=size,
                patch=patch,
                image_size=224,
                kwargs=dict(
                    patch_size=patch, num_blocks=depth, embed_dim=c, tokens_mlp_dim=ds, channels_mlp_dim=dc
                ),
                timm_name=_MIXER_TIMM.get(size),
                description=f"MLP-Mixer {size[0].upper()}/{patch} (paper Table 1): {depth} layers, C={c}, D_S={ds}, D_C={dc}",
            )
        )
    for width in ("ti", "s", "b", "l", "h"):
        dim, depth, heads = _VIT_DIMS[width]
        for patch in (32, 16, 14):
            size = f"{width}{patch}"
            specs.append(
                ModelSpec(
                    name=f"vit/{size}",
                    family="vit",
                    size=size,
                    patch=patch,
                    image_size=224,
                    kwargs=dict(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4.0),
                    timm_name=_VIT_TIMM.get(size),
                    description=f"ViT-{_VIT_TIMM_WIDTH[width].capitalize()}/{patch}: {depth} layers, width {dim}, {heads} heads, mlp 4x",
                )
            )
    for size in _BIT_SIZES:
        depth_str, wf = size[1:].split("x")
        layers = _BIT_LAYERS[int(depth_str)]
        specs.append(
            ModelSpec(
                name=f"bit/{size}",
                family="bit",
                size=size,
                patch=None,
                image_size=224,
                kwargs=dict(layers=layers, width_factor=int(wf)),
                timm_name=_BIT_TIMM.get(size),
                description=f"BiT-R{depth_str}x{wf} (ResNetV2, GroupNorm + weight standardisation), blocks {layers}",
            )
        )
    for family, table in (("mixer", CPU_MIXER), ("vit", CPU_VIT), ("bit", CPU_BIT)):
        for size, kw in table.items():
            specs.append(ModelSpec(name=f"{family}/{size}", family=family, size=size, patch=kw.get("patch_size"),
                                   image_size=32, kwargs=dict(kw), description=_cpu_description(family, size, kw)))
    return {s.name: s for s in specs}


def _cpu_description(family: str, size: str, kw: Mapping[str, Any]) -> str:
    what = {
        "mixer": lambda: f"MLP-Mixer {size}: patch 4, {kw['num_blocks']} layers, C={kw['embed_dim']}, "
                         f"D_S={kw['tokens_mlp_dim']}, D_C={kw['channels_mlp_dim']}",
        "vit": lambda: f"ViT {size}: patch 4, {kw['depth']} layers, width {kw['embed_dim']}, {kw['num_heads']} heads, mlp 4x",
        "bit": lambda: f"BiT {size}: {len(kw['layers'])} stages of 1 block, widths {tuple(kw['channels'])}, 3x3 stride-2 stem",
    }[family]()
    return f"{what} (CPU-sized, for 32x32 images)"


_REGISTRY: dict[str, ModelSpec] = _make_table()


def list_models(family: str | None = None) -> list[str]:
    """The built-in models (``<family>/<size>``, one Hydra config each) in table order, optionally of one
    family; for a registered timm family with a list of timm names, those (``<family>/<timm name>``)."""
    entry = get_family(family) if family not in (None, *BUILTIN) else None
    if entry is not None:
        return [f"{family}/{n}" for n in entry.timm]
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``: a built-in model, or ``<label>/<timm model name>`` (made and cached on first
    use, which imports timm and builds the model once on the meta device); :class:`ConfigError` (one line)
    naming what is allowed otherwise."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is not None:
        return spec
    family, sep, size = name.partition("/") if isinstance(name, str) else ("", "", "")
    if not sep or family in BUILTIN or re.fullmatch(LABEL, family) is None:
        raise ConfigError(f"model.name={name!r} is not a known model; known: {', '.join(list_models())}; or any "
                          f"timm model as <family>/<timm model name> with a family label other than "
                          f"{', '.join(BUILTIN)} (e.g. convnext/convnext_atto)")
    return _timm_spec(family, size)


@lru_cache(maxsize=None)
def _timm_spec(family: str, size: str) -> ModelSpec:
    import timm

    name = f"{family}/{size}"
    if "." in size:
        raise ConfigError(f"model.name={name!r} names a pretrained tag; allowed: the architecture name alone "
                          f"({family}/{size.split('.')[0]}): weights are never loaded")
    if not timm.is_model(size):
        close = difflib.get_close_matches(size, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; close: {', '.join(f'{family}/{c}' for c in close)}" if close else ""
        raise ConfigError(f"model.name={name!r}: {size!r} is not a timm model; allowed: a name timm.list_models() "
                          f"gives{hint}")
    entry = get_family(family)
    if entry is not None and entry.timm and size not in entry.timm:
        raise ConfigError(f"model.name={name!r}: family {family} takes the timm models {', '.join(entry.timm)}; "
                          f"allowed: one of those, or another family label")
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(size)
    input_size = getattr(cfg, "input_size", None) or (3, 224, 224)
    fixed = bool(getattr(cfg, "fixed_input_size", False))
    model = _meta_timm(size, fixed, int(input_size[-1]))
    return ModelSpec(name=name, family=family, size=size, patch=_patch_of(model), image_size=int(input_size[-1]),
                     kwargs={"fixed_input_size": fixed}, timm_name=size, from_timm=True,
                     description=f"timm {size} ({type(model).__name__})")


@lru_cache(maxsize=64)
def _meta_timm(size: str, fixed: bool, image_size: int) -> nn.Module:
    with torch.device("meta"):
        return _create_timm(size, fixed, 1000, image_size)


def _patch_of(model: nn.Module) -> int | None:
    """The (square) patch size of a model's patch embedding, None when it has none."""
    from timm.layers import PatchEmbed

    for m in model.modules():
        if isinstance(m, PatchEmbed):
            p = m.patch_size
            return int(p[0]) if isinstance(p, (tuple, list)) else int(p)
    return None


# ----------------------------------------------------------------------------------------------
# Builders (one per family). They take validated arguments.
# ----------------------------------------------------------------------------------------------


def _build_mixer(spec: ModelSpec, num_classes: int, image_size: int, *, gelu: str, drop_rate: float,
                 drop_path_rate: float, token_groups: int = 1) -> nn.Module:
    return MlpMixer(
        num_classes=num_classes,
        img_size=image_size,
        gelu=gelu,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        token_groups=token_groups,
        **spec.kwargs,
    )


def _build_vit(spec: ModelSpec, num_classes: int, image_size: int, *, drop_rate: float, drop_path_rate: float) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    # timm's defaults are ViT's: class token, learned 1-D position embeddings, qkv bias,
    # LayerNorm eps 1e-6, exact GELU, token pooling. drop_rate is dropout before the head.
    return VisionTransformer(
        img_size=image_size,
        num_classes=num_classes,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **spec.kwargs,
    )


def _build_bit(spec: ModelSpec, num_classes: int, image_size: int, *, drop_rate: float, drop_path_rate: float) -> nn.Module:
    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    conv_layer = partial(StdConv2d, eps=1e-8)  # what timm's _create_resnetv2_bit uses
    kwargs = dict(spec.kwargs)
    model = ResNetV2(
        num_classes=num_classes,
        stem_type="fixed",
        conv_layer=conv_layer,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    if spec.size in CPU_SIZES:
        # BiT's 7x7/2 conv + 3x3/2 max-pool would shrink a 32x32 image to 8x8 before the first
        # stage; use a single 3x3 stride-2 weight-standardised conv instead (pre-activation
        # network: the stem has no norm, the first block's norm follows). Stride 2 rather than 1
        # keeps its cost per image near the tiny Mixer's and ViT's, so the demo compares like with
        # like on 2 CPU cores. With three stages the final feature map is image_size/8 (4x4 at 32).
        stem_chs = model.stem.conv.out_channels
        model.stem = nn.Sequential()
        model.stem.add_module("conv", conv_layer(3, stem_chs, kernel_size=3, stride=2, padding=1))
        model.feature_info[0] = dict(num_chs=stem_chs, reduction=2, module="stem.conv")
        nn.init.kaiming_normal_(model.stem.conv.weight, mode="fan_out", nonlinearity="relu")
    return model


def _create_timm(size: str, fixed_input_size: bool, num_classes: int, image_size: int, **kwargs: Any) -> nn.Module:
    import timm

    if fixed_input_size:  # position embeddings or token MLPs sized for the grid: built for this resolution
        kwargs["img_size"] = image_size
    return timm.create_model(size, pretrained=False, num_classes=num_classes, **kwargs)


def _build_timm(spec: ModelSpec, num_classes: int, image_size: int, *, drop_rate: float,
                drop_path_rate: float) -> nn.Module:
    # Only rates that are set are passed: not every timm model takes both.
    rates = {k: v for k, v in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if v}
    return _create_timm(spec.timm_name, bool(spec.kwargs.get("fixed_input_size")), num_classes, image_size, **rates)


_BUILDERS = {"mixer": _build_mixer, "vit": _build_vit, "bit": _build_bit}


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    try:
        value = cfg.get(key, default)
    except Exception as exc:  # e.g. an OmegaConf interpolation that cannot resolve
        raise ConfigError(f"model.{key} could not be read: {exc}".splitlines()[0]) from exc
    return default if value is None else value


def _check_rate(key: str, value: Any) -> float:
    from ..schema import check_value

    check_value(f"model.{key}", value)
    return float(value)


def check_image_size(spec: ModelSpec, image_size: Any) -> int:
    """``image_size`` as an int if ``spec`` builds and runs at it; else a one-line :class:`ConfigError`.
    Built-in families check their patch and minimum size; a timm model is built and run once on the meta
    device at that size (cached), so whatever timm refuses is reported."""
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ConfigError(f"data.image_size={image_size!r} is not allowed for model {spec.name}; allowed: a positive integer")
    image_size = int(image_size)
    if spec.from_timm:
        return _check_timm_size(spec, image_size)
    if spec.patch is not None and image_size % spec.patch:
        raise ConfigError(
            f"data.image_size={image_size} is not divisible by the patch size {spec.patch} of model {spec.name}; "
            f"allowed: multiples of {spec.patch} (default {spec.image_size})"
        )
    min_size = 8 if spec.size in CPU_SIZES else 32  # total stride of the network
    if spec.family == "bit" and image_size < min_size:
        raise ConfigError(f"data.image_size={image_size} is too small for model {spec.name}; allowed: >= {min_size}")
    return image_size


def _check_timm_size(spec: ModelSpec, image_size: int) -> int:
    if spec.patch is not None and image_size % spec.patch:
        raise ConfigError(
            f"data.image_size={image_size} is not divisible by the patch size {spec.patch} of model {spec.name}; "
            f"allowed: multiples of {spec.patch} (default {spec.image_size})"
        )
    try:
        _runs_at(spec.timm_name, bool(spec.kwargs.get("fixed_input_size")), image_size)
    except Exception as exc:  # timm's or torch's own words, first line
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"data.image_size={image_size} does not fit model {spec.name} (timm: {why}); allowed: a "
                          f"resolution timm's {spec.timm_name} builds and runs at (default {spec.image_size})") from None
    return image_size


@lru_cache(maxsize=None)
def _runs_at(size: str, fixed: bool, image_size: int) -> None:
    """Build ``size`` on the meta device at ``image_size`` and run one image through it (raises what timm raises)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _meta_timm(size, fixed, image_size).eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device="meta"))


def build_model(cfg: Mapping[str, Any], num_classes: int, image_size: int | None = None) -> nn.Module:
    """Build the model that ``cfg`` (the ``model`` config node, a DictConfig or dict) names.

    See :func:`check_model_cfg` for the keys and the checks.
    """
    spec, image_size, kwargs = check_model_cfg(cfg, num_classes, image_size)
    return build_from_spec(spec, num_classes, image_size, **kwargs)


def check_model_cfg(cfg: Mapping[str, Any], num_classes: int = 1000,
                    image_size: int | None = None) -> tuple[ModelSpec, int, dict[str, Any]]:
    """Validate a ``model`` config node without building anything; returns (spec, image size, builder kwargs).

    Keys: ``name`` (required, e.g. ``'mixer/b16'`` or ``'convnext/convnext_atto'``); optional ``gelu``
    (mixer only, ``'exact'`` default or ``'tanh'``), ``drop_rate`` (dropout before the head, default 0),
    ``drop_path_rate`` (stochastic depth, default 0; linear over blocks for Mixer and ViT,
    over stages for BiT as timm does; a timm model applies them as its timm class does, and one
    that does not take a rate refuses it), ``token_groups`` (mixer only: 1 tied, the default; G
    unties token mixing into G channel groups, paper App. A). If present, ``family`` (a lowercase
    identifier) and ``size`` must agree with ``name``; ``image_size`` in ``cfg`` is ignored (pass
    ``data.image_size`` as ``image_size``; ``None`` uses the spec's default). Weights are randomly initialised (never pretrained).

    Raises :class:`ConfigError` with a one-line message for any invalid value.
    """
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
        raise ConfigError(f"model={cfg!r} is not a mapping; allowed: a config with at least model.name")
    name = _get(cfg, "name")
    if name is None:
        raise ConfigError(f"model.name is missing; known: {', '.join(list_models())}")
    if _get(cfg, "family") is not None:
        check_label(_get(cfg, "family"))
    spec = get_spec(name)
    for key in ("family", "size"):
        given = _get(cfg, key)
        if given is not None and given != getattr(spec, key):
            raise ConfigError(
                f"model.{key}={given!r} does not match model.name={name!r}; allowed: {getattr(spec, key)!r}"
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} is not allowed; allowed: an integer >= 1")
    image_size = check_image_size(spec, spec.image_size if image_size is None else image_size)
    drop_rate = _check_rate("drop_rate", _get(cfg, "drop_rate", 0.0))
    drop_path_rate = _check_rate("drop_path_rate", _get(cfg, "drop_path_rate", 0.0))
    gelu = _get(cfg, "gelu")
    kwargs: dict[str, Any] = dict(drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if spec.family == "mixer":
        gelu = "exact" if gelu is None else gelu
        if not isinstance(gelu, str) or gelu not in GELU_KINDS:
            raise ConfigError(f"model.gelu={gelu!r} is not allowed; allowed: {', '.join(GELU_KINDS)}")
        kwargs["gelu"] = gelu
        groups = _get(cfg, "token_groups", 1)
        width = spec.kwargs["embed_dim"]
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1 or width % groups:
            raise ConfigError(f"model.token_groups={groups!r} is not allowed; allowed: a divisor of the {width} "
                              f"channels of {name} (1 = tied, the paper's Mixer; {width} = one per channel)")
        kwargs["token_groups"] = int(groups)
    else:
        if gelu is not None:
            raise ConfigError(f"model.gelu={gelu!r} applies to mixer models only; model.name={name!r} takes no gelu")
        if _get(cfg, "token_groups", 1) != 1:
            raise ConfigError(f"model.token_groups applies to mixer models only; model.name={name!r} has no token mixing MLP")
    if spec.from_timm:
        _check_timm_rates(spec, kwargs)
    return spec, image_size, kwargs


def _check_timm_rates(spec: ModelSpec, kwargs: Mapping[str, Any]) -> None:
    """A rate set for a timm model whose class does not take it is refused, not ignored."""
    for key in ("drop_rate", "drop_path_rate"):
        if kwargs[key]:
            try:
                _meta_with(spec.timm_name, key)
            except TypeError as exc:
                raise ConfigError(f"model.{key}={kwargs[key]!r} is not taken by timm model {spec.timm_name} "
                                  f"({exc}); allowed: 0") from None


@lru_cache(maxsize=None)
def _meta_with(size: str, key: str) -> None:
    import timm

    with torch.device("meta"):
        timm.create_model(size, pretrained=False, **{key: 0.1})


def build_from_spec(
    spec: ModelSpec,
    num_classes: int,
    image_size: int | None = None,
    *,
    gelu: str = "exact",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    token_groups: int = 1,
) -> nn.Module:
    """Build ``spec`` without validating the arguments (:func:`build_model` validates, then calls
    this). Also builds specs that are not in the table, e.g. a depth-reduced copy made with
    ``dataclasses.replace`` (the FLOP counter does this)."""
    image_size = spec.image_size if image_size is None else image_size
    kwargs: dict[str, Any] = dict(drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    if spec.from_timm:
        return _build_timm(spec, num_classes, image_size, **kwargs)
    if spec.family == "mixer":
        kwargs.update(gelu=gelu, token_groups=token_groups)
    return _BUILDERS[spec.family](spec, num_classes, image_size, **kwargs)


def prelogits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Frozen ``(B, D)`` features for few-shot linear evaluation, for any model :func:`build_model` makes.

    Our Mixer: final LayerNorm then mean over tokens (``forward_features``). timm ViT: the class
    token after the final LayerNorm; timm ResNetV2: global average pool after the final
    GroupNorm+ReLU; any other timm model: what its head reads before the classifier (all three via
    ``forward_head(forward_features(x), pre_logits=True)``, which also applies timm's head dropout in
    train mode, so call this under ``model.eval()``).
    """
    if isinstance(model, MlpMixer):
        return model.forward_features(x)
    return model.forward_head(model.forward_features(x), pre_logits=True)
