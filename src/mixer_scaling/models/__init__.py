"""Models: our MLP-Mixer, the registry of every model (Mixer, ViT, BiT) and FLOP/param counts.

Public API::

    build_model(cfg, num_classes, image_size=None) -> nn.Module   # cfg: the `model` config node
    check_model_cfg(cfg, num_classes=1000, image_size=None)       # the same checks, nothing built
    list_models(family=None) -> list[str]; get_spec(name) -> ModelSpec
    prelogits(model, x) -> Tensor (B, D)                           # few-shot features
    count_params(model, head=True); forward_flops(name, image_size=None, num_classes=1000)
    mixer_flops(spec, image_size=None, num_classes=1000)
    model_stats(name, num_classes=1000); registry_rows(num_classes=1000)
"""

from mixer_scaling.models.flops import (
    STATS_KEYS,
    count_params,
    forward_flops,
    mixer_flops,
    model_stats,
    registry_rows,
)
from mixer_scaling.models.mixer import MixerBlock, MlpBlock, MlpMixer
from mixer_scaling.models.registry import (
    FAMILIES,
    ModelSpec,
    build_model,
    check_image_size,
    check_model_cfg,
    get_spec,
    list_models,
    prelogits,
)

__all__ = [
    "FAMILIES",
    "STATS_KEYS",
    "MixerBlock",
    "MlpBlock",
    "MlpMixer",
    "ModelSpec",
    "build_model",
    "check_image_size",
    "check_model_cfg",
    "count_params",
    "forward_flops",
    "get_spec",
    "list_models",
    "mixer_flops",
    "model_stats",
    "prelogits",
    "registry_rows",
]
