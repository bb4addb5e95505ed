"""Evaluation: the linear few-shot protocol of big_vision (``fewshot_lsr``)."""

from mixer_scaling.evaluate.fewshot import (
    BIAS_CONSTANT,
    DEFAULT_L2_REG,
    chosen_indices,
    fewshot_accuracies,
    fewshot_eval,
    fewshot_indices,
    ridge_fit,
    ridge_predict,
)

__all__ = [
    "BIAS_CONSTANT",
    "DEFAULT_L2_REG",
    "chosen_indices",
    "fewshot_accuracies",
    "fewshot_eval",
    "fewshot_indices",
    "ridge_fit",
    "ridge_predict",
]
