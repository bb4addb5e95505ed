"""From the ``data`` config group to the data sets a run trains and validates on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataError
from .synthetic import SyntheticImages

NAMES = ("synthetic", "imagefolder", "cifar10", "cifar100")


@dataclass
class DataBundle:
    train: Dataset       # the pre-training subset after data.fraction
    val: Dataset         # a fixed validation split, never overlapping train
    num_classes: int
    image_size: int
    train_size: int      # len(train)
    full_size: int       # the 100% training set
    collate_fn: Callable | None  # pass to DataLoader


def passthrough(batch):
    """Collate for sets whose ``__getitems__`` already returns a whole (x, y) batch."""
    return batch


def validate_data_cfg(cfg: Mapping) -> None:
    """Cheap checks of the ``data`` group (nothing is read from disk but directory existence)."""
    name = cfg.get("name")
    if name not in NAMES:
        raise ConfigError(f"data.name={name!r} is not allowed; choose one of: {', '.join(NAMES)}")
    f = cfg.get("fraction")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 < f <= 1) or math.isnan(f):
        raise ConfigError(f"data.fraction={f!r} is outside (0, 1]")
    if name == "synthetic":
        for key, low in (("num_classes", 2), ("size", 1), ("val_size", 1)):
            v = cfg.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"data.{key}={v!r} is not allowed; expected an integer >= {low}")
    else:
        root = cfg.get("root")
        if root in (None, "", "???") or not Path(str(root)).is_dir():
            what = "an ImageFolder tree with train/ and val/ class folders" if name == "imagefolder" \
                else f"a folder for torchvision's {name} files"
            raise DataError(f"data.root={root!r} does not exist; expected {what}")
    n = subset_size(cfg.get("size", 1), f) if name == "synthetic" else 1
    if n < 1:
        raise ConfigError(f"data.fraction={f} of data.size={cfg.get('size')} selects no image")


def subset_size(full: int, fraction: float) -> int:
    return int(round(full * fraction))


def nested_subset(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """The first round(f·N) examples of a fixed permutation (seeded by the data set, not the run), so
    every smaller fraction is inside every larger one, as the paper's JFT subsets."""
    n = subset_size(len(ds), fraction)
    if n < 1:
        raise ConfigError(f"data.fraction={fraction} of {len(ds)} images selects no image")
    if n == len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return Subset(ds, order[:n].tolist())


def build_data(cfg: Mapping) -> DataBundle:
    """Build the ``data`` group's sets; raises ConfigError/DataError (one line) on bad input."""
    validate_data_cfg(cfg)
    size, name, fraction = int(cfg.image_size), cfg.name, float(cfg.fraction)
    if name == "synthetic":
        common = dict(image_size=size, classes=int(cfg.num_classes), seed=int(cfg.seed))
        # Labels cycle through the classes, so a prefix is a balanced nested subset.
        train = SyntheticImages(subset_size(cfg.size, fraction), split="train", flip=bool(cfg.get("flip")),
                                randaugment=cfg.get("randaugment"), **common)
        val = SyntheticImages(int(cfg.val_size), split="val", **common)
        return DataBundle(train, val, int(cfg.num_classes), size, len(train), int(cfg.size), passthrough)

    from .folders import cifar, image_folder

    root = Path(str(cfg.root))
    if name == "imagefolder":
        full = image_folder(root, cfg.get("train_dir", "train"), size, True, cfg)
        val = image_folder(root, cfg.get("val_dir", "val"), size, False, cfg)
        if val.classes != full.classes:
            raise DataError(f"data.root={str(root)!r}: val/ classes differ from train/ classes")
        num_classes = len(full.classes)
    else:
        full = cifar(name, root, size, True, cfg)
        val = cifar(name, root, size, False, cfg)
        num_classes = len(full.classes)
    train = nested_subset(full, fraction, int(cfg.get("seed", 0)))
    return DataBundle(train, val, num_classes, size, len(train), len(full), None)
