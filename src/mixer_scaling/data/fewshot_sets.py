"""Downstream sets for linear few-shot evaluation: a pool to draw k shots from, and a test set.

* ``digits``: scikit-learn's bundled handwritten digits (real scans, 10 classes, 1,797 8×8 images,
  shipped with scikit-learn, so nothing is downloaded), resized to the run's resolution, 3 channels.
* ``synthetic_heldout``: classes of the embedded generator that pre-training never sees.
* ``cifar10``, ``cifar100``, ``imagefolder``: real sets for users' evaluations (``fewshot.root``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import ConfigError, DataError
from .build import passthrough
from .synthetic import SyntheticImages

NAMES = ("digits", "synthetic_heldout", "cifar10", "cifar100", "imagefolder")
DIGITS_POOL_PER_CLASS = 100  # the rest (~80 per class) is the test set


@dataclass
class FewshotSet:
    train: Dataset   # the pool the k shots are drawn from
    test: Dataset
    num_classes: int
    collate_fn: Callable | None = None


def digits(image_size: int) -> FewshotSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]  # [-1, 1]
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target.astype(np.int64))
    # A fixed stratified split: the first 100 images of each class (in a seeded order) form the pool.
    order = np.random.default_rng(0).permutation(len(y))
    pool = np.concatenate([order[d.target[order] == c][:DIGITS_POOL_PER_CLASS] for c in range(10)])
    test = np.setdiff1d(np.arange(len(y)), pool)
    return FewshotSet(TensorDataset(x[pool], y[pool]), TensorDataset(x[test], y[test]), 10)


def synthetic_heldout(image_size: int, data_cfg: Mapping | None, classes: int = 20, pool: int = 30,
                      test: int = 20) -> FewshotSet:
    data_cfg = data_cfg or {}
    seed = int(data_cfg.get("seed", 0))
    # Class ids after the pre-training ones (synthetic data has num_classes of them; 1000 covers the rest).
    offset = int(data_cfg.get("num_classes", 1000)) if data_cfg.get("name") == "synthetic" else 1000
    common = dict(image_size=image_size, classes=classes, seed=seed, class_offset=offset)
    return FewshotSet(SyntheticImages(classes * pool, split="fewshot_train", **common),
                      SyntheticImages(classes * test, split="fewshot_test", **common), classes, passthrough)


def build_fewshot_sets(fcfg: Mapping, image_size: int, data_cfg: Mapping | None = None) -> dict[str, FewshotSet]:
    names = list(fcfg.get("datasets") or [])
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(f"fewshot.datasets={names} has unknown {unknown}; choose from: {', '.join(NAMES)}")
    shots = list(fcfg.get("shots") or [])
    if not shots or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in shots):
        raise ConfigError(f"fewshot.shots={shots} is not allowed; expected a list of integers >= 1")
    sets = {}
    for name in names:
        if name == "digits":
            sets[name] = digits(image_size)
        elif name == "synthetic_heldout":
            sets[name] = synthetic_heldout(image_size, data_cfg)
        else:
            sets[name] = _user_set(name, fcfg, image_size)
    for name, fs in sets.items():
        fewest = min(np.bincount(_labels(fs.train), minlength=fs.num_classes))
        if max(shots) > fewest:
            raise ConfigError(f"fewshot.shots={shots}: {name} has only {fewest} pool images in some class")
    return sets


def _labels(ds: Dataset) -> np.ndarray:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy()
    if isinstance(ds, SyntheticImages):
        return ds.labels()
    return np.asarray(ds.targets)


def _user_set(name: str, fcfg: Mapping, image_size: int) -> FewshotSet:
    from .folders import cifar, image_folder

    root = fcfg.get("root")
    if not root or not Path(str(root)).is_dir():
        raise DataError(f"fewshot.root={root!r} does not exist; {name} few-shot evaluation reads it from there")
    opts = {"download": fcfg.get("download", False), "verify_images": True}
    if name == "imagefolder":
        train = image_folder(Path(root), "train", image_size, False, opts)
        test = image_folder(Path(root), "val", image_size, False, opts)
        return FewshotSet(train, test, len(train.classes))
    train = cifar(name, Path(root), image_size, True, opts, augment=False)
    test = cifar(name, Path(root), image_size, False, opts)
    return FewshotSet(train, test, len(train.classes))
