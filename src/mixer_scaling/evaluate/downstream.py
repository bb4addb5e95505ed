"""Few-shot linear evaluation of a trained model on its downstream sets (the paper's protocol).

Features are the model's frozen pre-logits (:func:`mixer_scaling.models.prelogits`), extracted once
per set; :func:`mixer_scaling.evaluate.fewshot.fewshot_eval` does the closed-form ridge regression.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..models import prelogits
from .classify import map_batches, ordered_loader
from .fewshot import fewshot_eval


def features(model, dataset, device, batch_size: int, collate_fn=None, bf16: bool = False):
    return map_batches(prelogits, model, ordered_loader(dataset, batch_size, collate_fn), device, bf16)


def evaluate_fewshot(model: torch.nn.Module, sets: Mapping, fcfg: Mapping, device: torch.device,
                     batch_size: int = 256, bf16: bool = False) -> dict[str, dict[str, float]]:
    """``{set name: {str(k): mean accuracy over seeds}}`` for every k in ``fewshot.shots``."""
    out = {}
    for name, fs in sets.items():
        collate = getattr(fs, "collate_fn", None)
        train_x, train_y = features(model, fs.train, device, batch_size, collate, bf16)
        test_x, test_y = features(model, fs.test, device, batch_size, collate, bf16)
        accs = fewshot_eval(train_x, train_y, test_x, test_y, shots=tuple(fcfg.shots),
                            seeds=tuple(fcfg.seeds), l2_reg=float(fcfg.l2_reg))
        out[name] = {str(k): float(v) for k, v in accs.items()}
    return out
