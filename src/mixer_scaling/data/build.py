"""From the ``data`` config group to the data sets a run trains and validates on.

    validate_data_cfg(cfg.data)   # cheap checks of the keys (only directory existence is looked at)
    build_data(cfg.data)          # -> DataBundle: nested train subset (data.fraction), val, sizes, collate

``data.permutation`` (``patch_pixel`` / ``global``, see :mod:`.permute`) rearranges the pixels of the
train and val images, after the rest of the pipeline (augmentation included).

Bad input raises :class:`ConfigError` / :class:`DataError` with one line naming the key, the value and
what is allowed, before anything is created (nothing here writes files; torchvision's CIFAR download
runs only when ``data.download`` is true).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from ..errors import ConfigError, DataError
from .permute import check_permutation_cfg, from_data_cfg, permuted
from .synthetic import NUM_COMBOS, SyntheticImages

NAMES = ("synthetic", "imagefolder", "cifar10", "cifar100")
#: Class ids of the embedded data kept free for held-out few-shot classes.
HELDOUT_RESERVE = 20
MAX_SYNTHETIC_CLASSES = NUM_COMBOS - HELDOUT_RESERVE
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


collate = passthrough


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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_key(cfg: Mapping, key: str, low: int, high: int | None = None, prefix: str = "data") -> int:
    v = cfg.get(key)
    if not _is_int(v) or v < low or (high is not None and v > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(f"{prefix}.{key}={v!r} is not allowed; expected {allowed}")
    return v


def _bool_key(cfg: Mapping, key: str, default: bool, prefix: str = "data") -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{prefix}.{key}={v!r} is not allowed; expected true or false")
    return v


def check_fraction(f) -> float:
    if isinstance(f, bool) or not isinstance(f, (int, float)) or math.isnan(f) or not (0 < f <= 1):
        raise ConfigError(f"data.fraction={f!r} is outside (0, 1]")
    return float(f)


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


def subset_size(full: int, fraction: float) -> int:
    """round(f * N): the size of the data.fraction subset of N training examples."""
    return int(round(full * fraction))


def _check_subset(full: int, fraction: float, what: str) -> int:
    n = subset_size(full, fraction)
    if n < 1:
        raise ConfigError(f"data.fraction={fraction} of {what}={full} selects no image; need round(fraction * {full}) >= 1")
    return n


def validate_data_cfg(cfg: Mapping) -> None:
    """Cheap checks of the ``data`` group: nothing is read but whether ``data.root`` is a directory."""
    cfg = plain(cfg)
    name = cfg.get("name")
    if name not in NAMES:
        raise ConfigError(f"data.name={name!r} is not allowed; choose one of: {', '.join(NAMES)}")
    fraction = check_fraction(cfg.get("fraction"))
    image_size = _int_key(cfg, "image_size", 4)
    check_permutation_cfg(cfg, image_size)
    if "num_workers" in cfg:
        _int_key(cfg, "num_workers", 0)
    if "seed" in cfg:
        _int_key(cfg, "seed", 0)
    _bool_key(cfg, "flip", False)
    check_randaugment(cfg.get("randaugment"))
    nuisance = cfg.get("nuisance", 1.0)
    if name != "synthetic" and nuisance != 1.0:
        raise ConfigError(f"data.nuisance={nuisance!r} is not allowed with data.name={name}; it is a knob of the "
                          "embedded data (data=synthetic)")
    if name == "synthetic":
        _int_key(cfg, "num_classes", 2, MAX_SYNTHETIC_CLASSES)
        if isinstance(nuisance, bool) or not isinstance(nuisance, (int, float)) or not 0 <= nuisance <= 1:
            raise ConfigError(f"data.nuisance={nuisance!r} is not allowed; expected a number in [0, 1] "
                              "(1: the full per-sample variation, 0: class prototypes)")
        size = _int_key(cfg, "size", 1)
        # two images at least: one half of the split chooses (early stopping), the other is reported
        _int_key(cfg, "val_size", 2)
        _check_subset(size, fraction, "data.size")
        return
    scale = cfg.get("crop_scale", [0.08, 1.0])
    if (
        not isinstance(scale, (list, tuple))
        or len(scale) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in scale)
        or not 0 < scale[0] <= scale[1] <= 1
    ):
        raise ConfigError(f"data.crop_scale={scale!r} is not allowed; expected [low, high] with 0 < low <= high <= 1")
    pct = cfg.get("crop_pct", 0.875)
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 1:
        raise ConfigError(f"data.crop_pct={pct!r} is outside (0, 1]")
    root = cfg.get("root")
    if name == "imagefolder":
        what = "an ImageFolder tree with train/ and val/ class folders"
        for key in ("train_dir", "val_dir"):
            v = cfg.get(key, key[:-4] if key == "train_dir" else "val")
            if not isinstance(v, str) or not v or Path(v).is_absolute() or ".." in Path(v).parts:
                raise ConfigError(f"data.{key}={v!r} is not allowed; expected a folder name inside data.root")
        _bool_key(cfg, "verify_images", True)
    else:
        what = f"a folder for torchvision's {name} files (or set data.download=true to fetch them there)"
        _bool_key(cfg, "download", False)
    if root in _UNSET:
        raise DataError(f"data.root is not set; expected {what}, e.g. data.root=/data/{name}")
    if not Path(str(root)).is_dir() and not (name != "imagefolder" and cfg.get("download") is True):
        raise DataError(f"data.root={str(root)!r} does not exist; expected {what}")


def nested_subset(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """The first round(f * N) examples of a fixed permutation seeded by ``data.seed`` (the data set's,
    not the run's), so every smaller fraction is inside every larger one, like the paper's JFT subsets.
    Returns ``ds`` itself at fraction 1, else a :class:`torch.utils.data.Subset` (``.indices`` a list)."""
    n = _check_subset(len(ds), fraction, "the training images")
    if n == len(ds):
        return ds
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(seed)))
    return Subset(ds, order[:n].tolist())


def build_data(cfg: Mapping, model_patch: int | None = None) -> DataBundle:
    """Build the ``data`` group's training subset and validation set (see :class:`DataBundle`).

    ``model_patch``: what ``data.permutation_patch: null`` means (the model's patch size); by default
    read from ``model.name`` when ``cfg`` is the ``data`` node of a whole run config."""
    validate_data_cfg(cfg)
    index = from_data_cfg(cfg, model_patch=model_patch)
    bundle = _build(plain(cfg))
    if index is not None:
        kind = plain(cfg)["permutation"]
        bundle.train, bundle.val = permuted(bundle.train, index, kind), permuted(bundle.val, index, kind)
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

    from .folders import cifar, image_folder_pair

    root = Path(str(cfg["root"]))
    if name == "imagefolder":
        full_set, val = image_folder_pair(root, cfg, image_size, key="data")
    else:
        full_set = cifar(name, root, image_size, train=True, cfg=cfg, key="data")
        val = cifar(name, root, image_size, train=False, cfg=cfg, key="data")
    train = nested_subset(full_set, fraction, seed)
    return DataBundle(train, val, len(full_set.classes), image_size, len(train), len(full_set), passthrough, seed)
