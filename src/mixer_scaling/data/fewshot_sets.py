"""Downstream sets for linear few-shot evaluation: a pool to draw k shots per class from, and a test set.

* ``digits``: scikit-learn's bundled handwritten digits (real scans, 10 classes, 1,797 8x8 images,
  shipped inside scikit-learn, so nothing is downloaded), scaled to [-1, 1], resized bilinearly to the
  run's resolution, 3 channels. A fixed stratified split: 100 images per class form the pool (1,000),
  the other 797 the test set.
* ``synthetic_heldout``: 20 classes of the embedded generator that pre-training never sees (class ids
  after ``data.num_classes``), 30 pool and 50 test images per class, from their own index streams.
* ``cifar10``, ``cifar100``: torchvision's train split is the pool, test split the test set (read from
  ``fewshot.root``, downloaded there only with ``fewshot.download=true``).
* ``imagefolder``: ``fewshot.root/train`` is the pool, ``fewshot.root/val`` the test set.

Items are (float32 3xSxS in [-1, 1], int label) like the pre-training sets, without augmentation;
pass ``FewshotSet.collate_fn`` to the DataLoader. A ``data.permutation`` of the pre-training ``data``
group rearranges the pixels of these sets too (the same fixed permutation, :mod:`.permute`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .common import MAX_SYNTHETIC_CLASSES, dataset_labels, passthrough, plain  # noqa: F401 (dataset_labels: re-export)
from .permute import from_data_cfg, permuted
from .synthetic import SyntheticImages

NAMES = ("digits", "synthetic_heldout", "cifar10", "cifar100", "imagefolder")
DIGITS_POOL_PER_CLASS = 100
HELDOUT_CLASSES = 20
HELDOUT_POOL_PER_CLASS = 30
HELDOUT_TEST_PER_CLASS = 50
#: Held-out class ids start here when pre-training does not use the embedded data.
DEFAULT_HELDOUT_OFFSET = 1000


@dataclass
class FewshotSet:
    train: Dataset   # the pool the k shots are drawn from
    test: Dataset
    num_classes: int
    collate_fn: Callable | None = passthrough

    def pool_labels(self) -> np.ndarray:
        return dataset_labels(self.train)


class DigitsImages(Dataset):
    """scikit-learn's 8x8 digits (values 0..16) as 3 x S x S images in [-1, 1], resized bilinearly on
    the fly (a whole batch at once in ``__getitems__``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int):
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 8.0 - 1.0)[:, None]
        self.targets = [int(v) for v in labels]
        self._labels = torch.as_tensor(self.targets, dtype=torch.int64)
        self.image_size = int(image_size)
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.targets)

    def labels(self) -> np.ndarray:
        return self._labels.numpy().copy()

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a data set of {len(self)} images")
        idx = torch.where(idx < 0, idx + len(self), idx)
        x = self.images[idx]
        s = self.image_size
        if s != x.shape[-1]:
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x.expand(-1, 3, -1, -1).clamp(-1.0, 1.0).contiguous(), self._labels[idx]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.__getitems__([index])
        return x[0], int(y[0])


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images ``(1797, 8, 8)``, labels) of scikit-learn's digits: the values ``load_digits()`` gives, read
    from the CSV file scikit-learn ships, as it reads it, without importing scikit-learn (~1 s at every
    run's start). Falls back to ``load_digits()`` where that file is not at its usual place."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(roots[0], "datasets", "data", "digits.csv.gz") if roots else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def digits(image_size: int) -> FewshotSet:
    images, target = digits_arrays()
    y = target.astype(np.int64)
    # A fixed stratified split: the first 100 images of each class in a seeded order form the pool.
    order = np.random.default_rng(0).permutation(len(y))
    pool = np.sort(np.concatenate([order[y[order] == c][:DIGITS_POOL_PER_CLASS] for c in range(10)]))
    test = np.setdiff1d(np.arange(len(y)), pool)
    return FewshotSet(DigitsImages(images[pool], y[pool], image_size), DigitsImages(images[test], y[test], image_size), 10)


def synthetic_heldout(image_size: int, data_cfg: Mapping | None = None) -> FewshotSet:
    """Held-out classes of the embedded generator: ids ``num_classes .. num_classes + 19`` of the
    pre-training data's seed and nuisance (or ids 1000.. of seed 0 when pre-training uses other data)."""
    data_cfg = plain(data_cfg)
    if data_cfg.get("name") == "synthetic":
        seed, offset = int(data_cfg.get("seed", 0)), int(data_cfg.get("num_classes", 100))
        nuisance = float(data_cfg.get("nuisance", 1.0))  # new classes of the same data set
    else:
        seed, offset, nuisance = 0, DEFAULT_HELDOUT_OFFSET, 1.0
    offset = min(offset, MAX_SYNTHETIC_CLASSES)
    common = dict(image_size=image_size, classes=HELDOUT_CLASSES, seed=seed, class_offset=offset, nuisance=nuisance)
    train = SyntheticImages(HELDOUT_CLASSES * HELDOUT_POOL_PER_CLASS, split="fewshot_train", **common)
    test = SyntheticImages(HELDOUT_CLASSES * HELDOUT_TEST_PER_CLASS, split="fewshot_test", **common)
    return FewshotSet(train, test, HELDOUT_CLASSES)


def _check_fewshot_cfg(fcfg: Mapping) -> tuple[list[str], list[int]]:
    """The ``fewshot`` group against the schema (:mod:`mixer_scaling.schema`); its (datasets, shots)."""
    from ..schema import check

    for key in ("datasets", "shots"):
        if fcfg.get(key) is None:
            raise ConfigError(f"fewshot.{key} is required and has no value; set it (fewshot.{key}=[...])")
    check(fcfg, "fewshot")
    return list(fcfg["datasets"]), list(fcfg["shots"])


def build_fewshot_sets(cfg_fewshot: Mapping, image_size: int, data_cfg: Mapping | None = None,
                       model_patch: int | None = None) -> dict[str, FewshotSet]:
    """``{name: FewshotSet}`` for ``fewshot.datasets`` at ``image_size``; ``data_cfg`` (the pre-training
    ``data`` group) places the held-out synthetic classes after the pre-training ones, and its
    ``data.permutation`` is applied to every set (``model_patch`` as in :func:`build_data`)."""
    fcfg = plain(cfg_fewshot)
    names, shots = _check_fewshot_cfg(fcfg)
    from ..schema import check_value

    check_value("data.image_size", image_size)
    sets: dict[str, FewshotSet] = {}
    for name in dict.fromkeys(names):
        if name == "digits":
            sets[name] = digits(image_size)
        elif name == "synthetic_heldout":
            sets[name] = synthetic_heldout(image_size, data_cfg)
        else:
            sets[name] = _user_set(name, fcfg, image_size)
    for name, fs in sets.items():
        counts = np.bincount(dataset_labels(fs.train), minlength=fs.num_classes)
        if max(shots) > counts.min():
            raise ConfigError(
                f"fewshot.shots={shots}: {name} has only {counts.min()} pool images in some class; "
                f"allowed: shots <= {counts.min()}"
            )
    index = from_data_cfg(data_cfg, image_size, model_patch) if data_cfg is not None else None
    if index is not None:
        kind = plain(data_cfg)["permutation"]
        for fs in sets.values():
            fs.train, fs.test = permuted(fs.train, index, kind), permuted(fs.test, index, kind)
    return sets


def check_user_root(name: str, fcfg: Mapping):
    """``fewshot.root`` for the user's set ``name``: DataError (one line) when it is unset, or missing and
    not to be downloaded."""
    root = fcfg.get("root")
    download = fcfg.get("download", False) is True
    if root in (None, "", "???"):
        raise DataError(f"fewshot.root is not set; the {name} few-shot set is read from there (fewshot.root=/data/{name})")
    if not Path(str(root)).is_dir() and not (download and name != "imagefolder"):
        raise DataError(f"fewshot.root={str(root)!r} does not exist; the {name} few-shot set is read from there")
    return root


def _user_set(name: str, fcfg: Mapping, image_size: int) -> FewshotSet:
    from .folders import cifar, image_folder_pair

    root = check_user_root(name, fcfg)
    download = fcfg.get("download", False) is True
    opts = {"download": download, "verify_images": fcfg.get("verify_images", True), "flip": False}
    if name == "imagefolder":
        train, test = image_folder_pair(Path(str(root)), opts, image_size, key="fewshot", train_augment=False)
    else:
        train = cifar(name, Path(str(root)), image_size, train=True, cfg=opts, augment=False, key="fewshot")
        test = cifar(name, Path(str(root)), image_size, train=False, cfg=opts, key="fewshot")
    return FewshotSet(train, test, len(train.classes))
