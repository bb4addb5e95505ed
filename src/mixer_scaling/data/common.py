"""What every data module shares: the collate, plain config dicts, labels without images, subset sizes.

A leaf of the package (it imports no other data module but :mod:`.synthetic`'s constants), so the builders
(:mod:`.build`, :mod:`.fewshot_sets`, :mod:`.shards`) and the wrappers (:mod:`.permute`) import it and not
each other.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from ..errors import ConfigError
from .synthetic import NUM_COMBOS

# Class ids of the embedded generator kept out of pre-training: the held-out few-shot classes come from them.
HELDOUT_RESERVE = 20
MAX_SYNTHETIC_CLASSES = NUM_COMBOS - HELDOUT_RESERVE


def passthrough(batch):
    """Collate for every set here: a whole ``(x, y)`` batch from ``__getitems__`` (the embedded and
    digits sets) passes through; a list of ``(x, y)`` samples (folder sets) is stacked as usual."""
    if (
        isinstance(batch, tuple)
        and len(batch) == 2
        and torch.is_tensor(batch[0])
        and batch[0].dim() == 4
        and torch.is_tensor(batch[1])
        and batch[1].dim() == 1
    ):
        return batch
    return default_collate(batch)


def plain(cfg: Mapping | None) -> dict[str, Any]:
    """A resolved plain dict of a (DictConfig) group; ``???`` (unset) values stay as ``"???"``."""
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def dataset_labels(ds: Dataset) -> np.ndarray:
    """All labels of a set without loading its images."""
    if hasattr(ds, "labels") and callable(ds.labels):
        return np.asarray(ds.labels())
    if isinstance(ds, torch.utils.data.Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices)]
    if hasattr(ds, "targets"):
        return np.asarray(ds.targets)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])


def subset_size(full: int, fraction: float) -> int:
    """round(f * N): the size of the data.fraction subset of N training examples."""
    return int(round(full * fraction))


def check_subset(full: int, fraction: float, what: str) -> int:
    n = subset_size(full, fraction)
    if n < 1:
        raise ConfigError(f"data.fraction={fraction} of {what}={full} selects no image; need round(fraction * {full}) >= 1")
    return n
