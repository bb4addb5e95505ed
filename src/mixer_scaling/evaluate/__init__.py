"""Evaluation: the linear few-shot protocol of big_vision (``fewshot_lsr``), and the ``eval`` group's checks."""

from collections.abc import Mapping

from mixer_scaling.errors import ConfigError

from mixer_scaling.evaluate.fewshot import (
    BIAS_CONSTANT,
    DEFAULT_L2_REG,
    fewshot_accuracies,
    fewshot_eval,
    fewshot_indices,
    ridge_fit,
    ridge_predict,
)



def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_eval_cfg(e: Mapping) -> None:
    """The ``eval`` group, before anything trains (a bad value here would fail after training, losing it)."""
    if not _positive_int(e.get("batch_size")):
        raise ConfigError(f"eval.batch_size={e.get('batch_size')!r} is not allowed; expected an integer > 0")
    sizes = e.get("throughput_batch_sizes")
    if sizes is None or len(sizes) == 0 or not all(_positive_int(b) for b in sizes):
        shown = list(sizes) if sizes is not None else None
        raise ConfigError(f"eval.throughput_batch_sizes={shown!r} is not allowed; expected a non-empty list of "
                          "integers > 0 (inference img/s is measured at each, the best kept), e.g. [1,8,32]")
    if not _positive_int(e.get("throughput_repeats")):
        raise ConfigError(f"eval.throughput_repeats={e.get('throughput_repeats')!r} is not allowed; expected an "
                          "integer > 0")


__all__ = [
    "check_eval_cfg",
    "BIAS_CONSTANT",
    "DEFAULT_L2_REG",
    "fewshot_accuracies",
    "fewshot_eval",
    "fewshot_indices",
    "ridge_fit",
    "ridge_predict",
]
