"""Users' own data: an ImageFolder tree (ImageNet layout) and CIFAR-10/100 through torchvision.

Transforms come from timm's factory (inception crop + flip for training, resize + centre crop for
evaluation, optional RandAugment) with mean = std = 0.5, so pixels land in [-1, 1] like the
embedded data. Problems with the files are found when the set is built, before a run starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset
from torchvision import datasets

from ..errors import DataError

HALF = (0.5, 0.5, 0.5)


def transform(image_size: int, train: bool, randaugment: str | None = None, flip: bool = True):
    return create_transform(image_size, is_training=train, mean=HALF, std=HALF, interpolation="bilinear",
                            auto_augment=randaugment if train else None, hflip=0.5 if (train and flip) else 0.0,
                            # timm's colour jitter is off in the paper's recipes
                            color_jitter=None)


def _rgb_loader(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")  # grayscale, CMYK and RGBA become 3 channels
    except Exception as exc:
        raise DataError(f"unreadable image {path}: {exc}") from None


def image_folder(root: Path, split_dir: str, image_size: int, train: bool, cfg: Mapping) -> datasets.ImageFolder:
    """``root/split_dir/<class>/<image>``; every image checked when ``data.verify_images`` is true.

    ``train`` selects timm's training transform (augmented) or its evaluation transform."""
    path = Path(root) / split_dir
    if not path.is_dir():
        raise DataError(f"data.root={str(root)!r} has no {split_dir}/ folder; expected {root}/{split_dir}/<class>/<image>")
    try:
        ds = datasets.ImageFolder(str(path), transform=transform(image_size, train, cfg.get("randaugment"),
                                                                 cfg.get("flip", True)), loader=_rgb_loader)
    except (FileNotFoundError, OSError) as exc:  # torchvision: no class folders, or no images in them
        raise DataError(f"data.root={str(root)!r}: {str(exc).splitlines()[0]}") from None
    if cfg.get("verify_images", True):
        for file, _ in ds.samples:
            try:
                with Image.open(file) as im:
                    im.verify()
            except Exception as exc:
                raise DataError(f"unreadable image {file}: {type(exc).__name__}: {exc}") from None
    return ds


def cifar(name: str, root: Path, image_size: int, train: bool, cfg: Mapping, augment: bool | None = None) -> Dataset:
    """The train or test split; augmented (timm's training transform) when ``augment`` (default: ``train``)."""
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    download = bool(cfg.get("download", False))
    augment = train if augment is None else augment
    try:
        return cls(str(root), train=train, download=download,
                   transform=transform(image_size, augment, cfg.get("randaugment"), cfg.get("flip", True)))
    except RuntimeError as exc:  # "Dataset not found or corrupted."
        hint = "" if download else "; set data.download=true to download it"
        raise DataError(f"data.root={str(root)!r} holds no {name} ({str(exc).splitlines()[0]}){hint}") from None
