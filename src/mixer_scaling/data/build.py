"""From the ``data`` config group to the data sets a run trains and validates on.

    validate_data_cfg(cfg.data)   # cheap checks of the keys (only directory existence is looked at)
    build_data(cfg.data)          # -> DataBundle: nested train subset (data.fraction), val, sizes, collate

``data=shards`` (:mod:`.shards`, written by ``mixer-scaling data pack``) is read as a stream: its training
set orders its own batches (``train_loader``, which the engine uses instead of its sampler) and its
subsets are prefixes of the packed order; the other sets' subsets come from :func:`nested_subset`.

``data.permutation`` (``patch_pixel`` / ``global``, see :mod:`.permute`) rearranges the pixels of the
train and val images, after the rest of the pipeline (augmentation included).

Bad input raises :class:`ConfigError` / :class:`DataError` with one line naming the key, the value and
what is allowed, before anything is created (nothing here writes files; torchvision's CIFAR download
runs only when ``data.download`` is true).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataError
from .common import HELDOUT_RESERVE, MAX_SYNTHETIC_CLASSES, check_subset, passthrough, plain, subset_size  # noqa: F401
from .permute import check_permutation_cfg, from_data_cfg, permuted
from .synthetic import SyntheticImages

collate = passthrough
_check_subset = check_subset  # the name shards and older callers use

NAMES = ("synthetic", "imagefolder", "cifar10", "cifar100", "shards")
#: Class ids of the embedded data kept free for held-out few-shot classes.
_UNSET = (None, "", "???")


@dataclass
class DataBundle:
    """The data of a run. The validation split is used in two fixed, disjoint halves (:func:`split_validation`):
    ``select`` chooses (early stopping, the best of a hyperparameter grid) and ``report`` is what is
    reported as upstream top-1, so a reported number is never the one it was chosen on."""

    train: Dataset       # the pre-training subset after data.fraction
    val: Dataset         # a fixed validation split, never overlapping train
    num_classes: int
    image_size: int
    train_size: int      # len(train)
    full_size: int       # the 100% training set
    collate_fn: Callable | None  # pass to DataLoader
    seed: int = 0        # data.seed: fixes the validation halves

    @property
    def select(self) -> Dataset:
        return split_validation(self.val, self.seed)[0]

    @property
    def report(self) -> Dataset:
        return split_validation(self.val, self.seed)[1]


def split_validation(val: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    """Two disjoint halves of a validation split, ``(select, report)``, from a permutation seeded by
    ``data.seed`` (a random half of a class-sorted folder is still class-balanced in expectation);
    ``select`` gets the smaller half when the size is odd. A split of one example is both halves."""
    n = len(val)
    if n < 2:
        return val, val
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 0x5E1EC7)).tolist()
    return Subset(val, sorted(order[: n // 2])), Subset(val, sorted(order[n // 2:]))


def check_randaugment(v, prefix: str = "data") -> str | None:
    """``None`` or a timm RandAugment string such as ``rand-m10-n2`` (parsed by timm to check it)."""
    if v in (None, "", False):
        return None
    ok = isinstance(v, str) and (v == "rand" or v.startswith("rand-"))
    if ok:
        try:
            from timm.data.auto_augment import rand_augment_transform

            rand_augment_transform(v, {})
        except Exception:
            ok = False
    if not ok:
        raise ConfigError(
            f"{prefix}.randaugment={v!r} is not allowed; expected null or a timm RandAugment string like rand-m10-n2"
        )
    return v


REQUIRED = ("name", "fraction", "image_size")


def validate_data_cfg(cfg: Mapping) -> None:
    """Check the ``data`` group: its keys against the schema (:mod:`mixer_scaling.schema`), then what needs
    this module (timm's RandAugment parser, the subset size, the permutation's patch); of the file system
    only whether ``data.root`` is a directory."""
    from ..schema import check, check_value

    cfg = plain(cfg)
    for key in REQUIRED:
        if cfg.get(key) is None:
            raise ConfigError(f"data.{key} is required and has no value; set it (data.{key}=...)")
    name = cfg["name"]
    check_value("data.name", name)
    if name != "synthetic" and cfg.get("root") in _UNSET:
        _check_root(cfg)
    check(cfg, "data")
    check_permutation_cfg(cfg, cfg["image_size"])
    check_randaugment(cfg.get("randaugment"))
    if name == "synthetic":
        check_subset(cfg.get("size", 1), cfg["fraction"], "data.size")
        return
    for key in ("train_dir", "val_dir"):
        v = cfg.get(key)
        if v is not None and (Path(v).is_absolute() or ".." in Path(v).parts):
            raise ConfigError(f"data.{key}={v!r} is not allowed; expected a folder name inside data.root")
    _check_root(cfg)


def _check_root(cfg: Mapping) -> None:
    """DataError (one line) unless ``data.root`` is a directory, or CIFAR is to be downloaded there."""
    name, root = cfg["name"], cfg.get("root")
    if name == "imagefolder":
        what = "an ImageFolder tree with train/ and val/ class folders"
    elif name == "shards":
        what = "a folder of shards with index.json (made by mixer-scaling data pack)"
    else:
        what = f"a folder for torchvision's {name} files (or set data.download=true to fetch them there)"
    if root in _UNSET:
        raise DataError(f"data.root is not set; expected {what}, e.g. data.root=/data/{name}")
    if not Path(str(root)).is_dir() and not (name in ("cifar10", "cifar100") and cfg.get("download") is True):
        raise DataError(f"data.root={str(root)!r} does not exist; expected {what}")


class IndexSubset(Subset):
    """A :class:`~torch.utils.data.Subset` whose ``indices`` is an int64 numpy array (8 bytes an index,
    not a Python list of ints); items are looked up by plain ``int``."""

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return self.dataset[[int(self.indices[i]) for i in idx]]
        return self.dataset[int(self.indices[idx])]

    def __getitems__(self, indices: list[int]) -> list:
        picked = [int(i) for i in self.indices[np.asarray(indices, dtype=np.int64)]]
        if callable(getattr(self.dataset, "__getitems__", None)):
            return self.dataset.__getitems__(picked)
        return [self.dataset[i] for i in picked]


def nested_subset(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """The first round(f * N) examples of a fixed permutation seeded by ``data.seed`` (the data set's,
    not the run's), so every smaller fraction is inside every larger one, like the paper's JFT subsets.
    Returns ``ds`` itself at fraction 1, else an :class:`IndexSubset` (``.indices`` an int64 array)."""
    n = check_subset(len(ds), fraction, "the training images")
    if n == len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(seed)))
    return IndexSubset(ds, order[:n].numpy())


def build_data(cfg: Mapping, model_patch: int | None = None) -> DataBundle:
    """Build the ``data`` group's training subset and validation set (see :class:`DataBundle`).

    ``model_patch``: what ``data.permutation_patch: null`` means (the model's patch size); by default
    read from ``model.name`` when ``cfg`` is the ``data`` node of a whole run config."""
    validate_data_cfg(cfg)
    index = from_data_cfg(cfg, model_patch=model_patch)
    bundle = _build(plain(cfg))
    if index is not None:
        kind = plain(cfg)["permutation"]
        if hasattr(bundle.train, "train_loader"):  # a stream reads its own batches: the permutation goes inside
            bundle.train.permutation = index
        else:
            bundle.train = permuted(bundle.train, index, kind)
        bundle.val = permuted(bundle.val, index, kind)
    return bundle


def _build(cfg: dict) -> DataBundle:
    name, image_size, fraction = cfg["name"], int(cfg["image_size"]), float(cfg["fraction"])
    seed = int(cfg.get("seed", 0))
    if name == "synthetic":
        common = dict(image_size=image_size, classes=int(cfg["num_classes"]), seed=seed,
                      nuisance=float(cfg.get("nuisance", 1.0)))
        full = int(cfg["size"])
        # Labels cycle through the classes, so every prefix is a balanced nested subset.
        train = SyntheticImages(
            subset_size(full, fraction),
            split="train",
            flip=bool(cfg.get("flip", False)),
            randaugment=cfg.get("randaugment") or None,
            **common,
        )
        val = SyntheticImages(int(cfg["val_size"]), split="val", **common)
        return DataBundle(train, val, int(cfg["num_classes"]), image_size, len(train), full, passthrough, seed)

    if name == "shards":  # the subset is a prefix of the packed order (see .shards)
        from .shards import shard_sets

        train, val, full = shard_sets(cfg, image_size, fraction, seed)
        return DataBundle(train, val, len(train.classes), image_size, len(train), full, passthrough, seed)

    from .folders import cifar, image_folder_pair

    root = Path(str(cfg["root"]))
    if name == "imagefolder":
        full_set, val = image_folder_pair(root, cfg, image_size, key="data")
    else:
        full_set = cifar(name, root, image_size, train=True, cfg=cfg, key="data")
        val = cifar(name, root, image_size, train=False, cfg=cfg, key="data")
    train = nested_subset(full_set, fraction, seed)
    return DataBundle(train, val, len(full_set.classes), image_size, len(train), len(full_set), passthrough, seed)
