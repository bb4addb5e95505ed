"""Users' own data: an ImageFolder tree (ImageNet layout) and CIFAR-10/100 through torchvision.

Transforms come from timm's factory (inception crop + flip for training, resize + centre crop for
evaluation, optional RandAugment) with mean = std = 0.5, so pixels land in [-1, 1] like the embedded
data; 8-bit grayscale, palette, CMYK and RGBA (any of :data:`RGB_MODES`) files become 3-channel RGB.
Problems with the files are found when the set is built, before a run starts: a missing root or split
folder, no class folders, no images, and (``verify_images``) any file PIL cannot identify or whose
channels do not make an RGB image (16-bit or 32-bit integer and float images, which PIL would clip
to white; multi-band images that are not colour). In a data-parallel run rank 0 alone verifies: the
ranks build their data one after the other, rank 0 first (:func:`mixer_scaling.distributed.main_first`),
so the others start only once it has checked every file, and a bad file stops the run on rank 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import DataError, one_line

HALF = (0.5, 0.5, 0.5)
#: PIL modes whose channels convert to 8-bit RGB without losing their values: 1-channel 8-bit (bilevel,
#: grayscale, palette), with alpha (dropped), 3-channel colour spaces and CMYK.
RGB_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_DEPTH = {"I": "32-bit integers", "F": "32-bit floats"}


def check_mode(image: Image.Image, path: str) -> None:
    """Raise DataError when ``image``'s channels cannot become the 3 8-bit channels the models take."""
    mode = image.mode
    if mode in RGB_MODES:
        return
    bands = image.getbands()
    depth = "16-bit integers" if mode.startswith("I;16") else _DEPTH.get(mode, "")
    what = f"{len(bands)} channel{'s' if len(bands) != 1 else ''}" + (f" of {depth}" if depth else f" ({''.join(bands)})")
    raise DataError(f"image {path} has mode {mode} ({what}); the models take 3-channel RGB from 8-bit images: "
                    f"allowed modes {', '.join(RGB_MODES)} (convert it, e.g. to 8-bit grayscale or RGB)")


def transform(
    image_size: int,
    train: bool,
    randaugment: str | None = None,
    flip: bool = True,
    crop_pct: float = 0.875,
    crop_scale: Sequence[float] = (0.08, 1.0),
):
    """timm's training (inception crop, flip, RandAugment) or evaluation (resize, centre crop)
    transform, normalised to [-1, 1]."""
    from timm.data import create_transform

    if train:
        return create_transform(
            image_size,
            is_training=True,
            mean=HALF,
            std=HALF,
            interpolation="bilinear",
            scale=tuple(float(s) for s in crop_scale),
            hflip=0.5 if flip else 0.0,
            auto_augment=randaugment or None,
            color_jitter=None,  # not part of the paper's recipes
        )
    return create_transform(
        image_size, is_training=False, mean=HALF, std=HALF, interpolation="bilinear", crop_pct=float(crop_pct)
    )


def rgb_loader(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            check_mode(image, path)
            return image.convert("RGB")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable image {path}: {_problem(exc)}") from None


class _Folder(datasets.ImageFolder):
    """ImageFolder with an optional fixed class -> index map (so val/ uses train/'s indices)."""

    def __init__(self, root: str, class_to_idx: dict[str, int] | None = None, **kw):
        self._fixed = class_to_idx
        super().__init__(root, **kw)

    def find_classes(self, directory):
        if self._fixed is None:
            return super().find_classes(directory)
        return sorted(self._fixed, key=self._fixed.get), dict(self._fixed)


def _class_dirs(path: Path) -> list[str]:
    return sorted(e.name for e in path.iterdir() if e.is_dir() and not e.name.startswith("."))


def _problem(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify"
    return f"{type(exc).__name__}: {one_line(exc)}"


def verify_images(files: Sequence[str], key: str = "data") -> None:
    """Open every file with PIL, check its mode (:func:`check_mode`) and verify its header; the first
    unreadable or non-RGB one raises DataError."""
    for file in files:
        try:
            with Image.open(file) as im:
                check_mode(im, file)
                im.verify()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"unreadable image {file}: {_problem(exc)}; every file in the class folders of "
                            f"{key}.root must be an image PIL reads (remove or replace it)") from None


def _verifies() -> bool:
    """Whether this process verifies images: a single process, or rank 0 of a data-parallel run."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def image_folder(
    root: Path,
    split_dir: str,
    image_size: int,
    train: bool,
    cfg: Mapping,
    class_to_idx: dict[str, int] | None = None,
    key: str = "data",
) -> datasets.ImageFolder:
    """``root/split_dir/<class>/<image>`` as a dataset of (x in [-1, 1], label).

    ``train`` selects timm's augmented training transform or its evaluation transform; with
    ``class_to_idx`` the labels follow that map (a class folder outside it is an error)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{key}.root={str(root)!r} does not exist; expected an ImageFolder tree with "
            f"{cfg.get('train_dir', 'train')}/ and {cfg.get('val_dir', 'val')}/ class folders"
        )
    path = root / split_dir
    if not path.is_dir():
        raise DataError(f"{key}.root={str(root)!r} has no {split_dir}/ folder; expected {root}/{split_dir}/<class>/<image>")
    found = _class_dirs(path)
    if not found:
        raise DataError(f"{key}.root={str(root)!r}: {split_dir}/ has no class folders; expected {path}/<class>/<image>")
    if class_to_idx is not None:
        extra = [c for c in found if c not in class_to_idx]
        if extra:
            raise DataError(f"{key}.root={str(root)!r}: {split_dir}/ has class folder {extra[0]!r} that the training split lacks")
    tf = transform(
        image_size,
        train,
        cfg.get("randaugment"),
        bool(cfg.get("flip", True)),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        crop_scale=cfg.get("crop_scale") or (0.08, 1.0),
    )
    try:
        ds = _Folder(str(path), class_to_idx=class_to_idx, transform=tf, loader=rgb_loader, allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{key}.root={str(root)!r}: {one_line(exc)}") from None
    if len(ds) == 0:
        raise DataError(
            f"{key}.root={str(root)!r}: {split_dir}/ holds no images (extensions {', '.join(IMG_EXTENSIONS)})"
        )
    if bool(cfg.get("verify_images", True)) and _verifies():
        verify_images([f for f, _ in ds.samples], key=key)
    return ds


def image_folder_pair(root: Path, cfg: Mapping, image_size: int, key: str = "data", train_augment: bool = True):
    """The training and validation folders of a tree; validation labels use the training classes."""
    train_dir, val_dir = str(cfg.get("train_dir", "train")), str(cfg.get("val_dir", "val"))
    for d in (train_dir, val_dir):  # both split folders exist before the (long) image verification
        if Path(root).is_dir() and not (Path(root) / d).is_dir():
            raise DataError(f"{key}.root={str(root)!r} has no {d}/ folder; expected {root}/{d}/<class>/<image>")
    train = image_folder(root, train_dir, image_size, train_augment, cfg, key=key)
    val = image_folder(root, val_dir, image_size, False, cfg, class_to_idx=train.class_to_idx, key=key)
    return train, val


_CIFAR = {"cifar10": (datasets.CIFAR10, "CIFAR-10", "cifar-10-batches-py"),
          "cifar100": (datasets.CIFAR100, "CIFAR-100", "cifar-100-python")}


def cifar(
    name: str,
    root: Path,
    image_size: int,
    train: bool,
    cfg: Mapping,
    augment: bool | None = None,
    key: str = "data",
) -> Dataset:
    """The train or test split of CIFAR-10/100 under ``root`` (torchvision's layout); downloaded there
    only when ``download`` is true. Augmented (timm's training transform) when ``augment``
    (default: ``train``); evaluation resizes the whole image (no centre crop)."""
    cls, title, folder = _CIFAR[name]
    download = bool(cfg.get("download", False))
    augment = train if augment is None else augment
    tf = transform(
        image_size,
        augment,
        cfg.get("randaugment"),
        bool(cfg.get("flip", True)),
        crop_pct=1.0,
        crop_scale=cfg.get("crop_scale") or (0.35, 1.0),
    )
    if not download and not Path(root).is_dir():
        raise DataError(f"{key}.root={str(root)!r} does not exist; expected torchvision's {title} files "
                        f"({folder}/) there, or set {key}.download=true to download them")
    try:
        return cls(str(root), train=train, download=download, transform=tf)
    except RuntimeError:  # "Dataset not found or corrupted. You can use download=True ..."
        hint = "" if download else f"; set {key}.download=true to download it"
        raise DataError(f"{key}.root={str(root)!r} holds no usable {title} ({folder}/ missing or corrupt){hint}") from None
    except Exception as exc:  # network errors while downloading and the like
        raise DataError(f"{key}.root={str(root)!r}: could not load {title}: {one_line(exc)}") from None
