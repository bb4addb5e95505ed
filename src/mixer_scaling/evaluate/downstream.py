"""Few-shot linear evaluation of a trained model on its downstream sets (the paper's protocol).

Features are the model's frozen pre-logits (:func:`mixer_scaling.models.prelogits`). Of a set's pool,
only the images some seed draws are read and passed through the model (:func:`.fewshot.chosen_indices`,
from the pool's labels alone): at most ``max(shots) x classes x seeds`` images, not the whole pool (on
ImageNet at most 75,000 of 1.28M at 25 shots, 1,000 classes, 3 seeds), with the same accuracies as
features of the whole pool. :func:`mixer_scaling.evaluate.fewshot.fewshot_eval` does the closed-form ridge regression.
Feature extraction can be split across the ranks of a data-parallel run (``rank``, ``world_size``,
see :mod:`.classify`); rank 0 then gathers the features and fits.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch.utils.data import Subset

from .. import distributed
from ..data.fewshot_sets import dataset_labels
from ..models import prelogits
from .classify import map_batches, ordered_loader, shard
from .fewshot import chosen_indices, fewshot_eval

log = logging.getLogger(__name__)


def features(model, dataset, device, batch_size: int, collate_fn=None, bf16: bool = False, num_workers: int = 0,
             rank: int = 0, world_size: int = 1):
    """``(features float32 on CPU, labels)`` of every example of ``dataset``, in order. With ``world_size``
    > 1 each rank extracts its :func:`.classify.shard`; rank 0 returns the whole set's, the others None."""
    loader = ordered_loader(shard(dataset, rank, world_size), batch_size, collate_fn, num_workers,
                            pin_memory=device.type == "cuda")
    x, y = map_batches(prelogits, model, loader, device, bf16)
    if world_size == 1:
        return x, y
    parts = distributed.gather_on_main((x, y))
    if parts is None:
        return None
    parts = [p for p in parts if len(p[0])]  # an empty shard has no feature dimension
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def evaluate_fewshot(model: torch.nn.Module, sets: Mapping, fcfg: Mapping, device: torch.device,
                     batch_size: int = 256, bf16: bool = False, num_workers: int = 0, rank: int = 0,
                     world_size: int = 1) -> dict[str, dict[str, float]] | None:
    """``{set name: {str(k): mean accuracy over seeds}}`` for every k in ``fewshot.shots``. With
    ``world_size`` > 1 every rank calls it and extracts its share; rank 0 returns the accuracies, the
    others None."""
    out = {}
    shots, seeds = tuple(fcfg.shots), tuple(fcfg.seeds)
    for name, fs in sets.items():
        collate = getattr(fs, "collate_fn", None)
        pool_labels, test_labels = dataset_labels(fs.train), dataset_labels(fs.test)
        # fewshot_eval's default class count, from the same labels
        num_classes = int(max(pool_labels.max(initial=-1), test_labels.max(initial=-1))) + 1
        chosen = chosen_indices(pool_labels, shots, seeds, num_classes)
        if rank == 0:
            log.info("few-shot %s: features of %d of the %d pool images", name, len(chosen), len(pool_labels))
        common = {"collate_fn": collate, "bf16": bf16, "num_workers": num_workers, "rank": rank,
                  "world_size": world_size}
        train = features(model, Subset(fs.train, chosen.tolist()), device, batch_size, **common)
        test = features(model, fs.test, device, batch_size, **common)
        if rank != 0:
            continue
        accs = fewshot_eval(train[0], pool_labels, test[0], test[1], shots=shots, seeds=seeds,
                            l2_reg=float(fcfg.l2_reg), pool_index=chosen)
        out[name] = {str(k): float(v) for k, v in accs.items()}
    return out if rank == 0 else None
