"""Models: our MLP-Mixer, the registry of every model (Mixer, ViT, BiT, any timm model in a family of
its own), the family table (:mod:`.families`), FLOP/param counts and higher-resolution fine-tuning inits.

Public API::

    build_model(cfg, num_classes, image_size=None) -> nn.Module   # cfg: the `model` config node
    check_model_cfg(cfg, num_classes=1000, image_size=None)       # the same checks, nothing built
    list_models(family=None) -> list[str]; get_spec(name) -> ModelSpec   # name: mixer/b16, convnext/convnext_atto
    is_convolutional(family) -> bool                               # channels-last pays off (families.FAMILIES)
    prelogits(model, x) -> Tensor (B, D)                           # few-shot features
    count_params(model, head=True); forward_flops(name, image_size=None, num_classes=1000)
    mixer_flops(spec, image_size=None, num_classes=1000)
    model_stats(name, num_classes=1000); registry_rows(num_classes=1000)
    MlpMixer(..., token_groups=1, token_parts=1)                   # untied token mixing; part-major tokens
    finetune_factor(pretrain_size, finetune_size) -> K
    expand_token_mixing(mixer, K) -> MlpMixer; expand_state_dict(state_dict, K)   # paper App. C
    resample_vit_pos_embed(state_dict, vit) -> state_dict           # ViT at another resolution

Names are imported on first use, so ``mixer_scaling.models.families`` loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    **dict.fromkeys(("STATS_KEYS", "count_params", "forward_flops", "mixer_flops", "model_stats", "registry_rows"),
                    "flops"),
    **dict.fromkeys(("GroupedLinear", "MixerBlock", "MlpBlock", "MlpMixer"), "mixer"),
    **dict.fromkeys(("FAMILIES", "ModelSpec", "build_model", "check_image_size", "check_model_cfg", "get_spec",
                     "is_convolutional", "list_models", "prelogits"), "registry"),
    **dict.fromkeys(("expand_state_dict", "expand_token_mixing", "finetune_factor", "resample_vit_pos_embed"),
                    "resolution"),
}

__all__ = [
    "FAMILIES", "STATS_KEYS", "GroupedLinear", "MixerBlock", "MlpBlock", "MlpMixer", "ModelSpec", "build_model",
    "check_image_size", "check_model_cfg", "count_params", "expand_state_dict", "expand_token_mixing",
    "finetune_factor", "forward_flops", "get_spec", "is_convolutional", "list_models", "mixer_flops", "model_stats",
    "prelogits", "registry_rows", "resample_vit_pos_embed",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
