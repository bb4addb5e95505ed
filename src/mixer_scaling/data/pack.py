"""``mixer-scaling data pack SRC OUT``: an ImageFolder tree or torchvision CIFAR into shards (:mod:`.shards`).

    pack(src, out, image_size=256, shard_size=1000, seed=0)  -> the index written to OUT/index.json

``SRC`` is an ImageFolder tree (``SRC/train/<class>/*``, ``SRC/val/<class>/*``; val's classes must be
among train's, labels follow train's sorted class names) or a folder holding torchvision's CIFAR-10
(``cifar-10-batches-py/``) or CIFAR-100 (``cifar-100-python/``) files (train and test → train and val).
Each split is written in one fixed order, a permutation seeded by ``seed`` (so any prefix is
class-balanced in expectation); every image is resized so its shorter side is ``image_size`` pixels
(bicubic) and stored as an RGB JPEG of ``quality``. Shard ``i`` of a split holds samples
``[i*shard_size, (i+1)*shard_size)`` of that order.

Resumable: the settings go to ``OUT/.pack.json`` first (a rerun with other settings stops with one line);
each shard is written to a temporary file and renamed into place when complete, so a rerun keeps every
shard that is there (after checking its member names and counts) and redoes only the missing ones.
``index.json`` is written last, atomically: a folder without it is an unfinished pack.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError, UserError, one_line
from .shards import FORMAT, INDEX_FILE, SPLITS, sample_key, shard_name

STATE_FILE = ".pack.json"
_CIFAR = {"cifar-10-batches-py": "cifar10", "cifar-100-python": "cifar100"}


# ------------------------------------------------------------------------------------------------ sources

def _source(src: Path) -> tuple[str, list[str], dict[str, list]]:
    """``(kind, class names, {split: [(image path or HxWx3 uint8 array, label), ...]})``."""
    if not src.is_dir():
        raise UserError(f"SRC={str(src)!r} does not exist; expected an ImageFolder tree (train/ and val/ class "
                        "folders) or a folder with torchvision's CIFAR files")
    for folder, kind in _CIFAR.items():
        if (src / folder).is_dir():
            from torchvision import datasets

            cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
            try:
                sets = {split: cls(str(src), train=split == "train", download=False) for split in SPLITS}
            except Exception as exc:
                raise DataError(f"SRC={str(src)!r}: {folder}/ is not usable CIFAR ({one_line(exc)})") from None
            return kind, list(sets["train"].classes), {
                split: [(ds.data[i], int(ds.targets[i])) for i in range(len(ds.data))] for split, ds in sets.items()}
    missing = [d for d in SPLITS if not (src / d).is_dir()]
    if missing:
        raise UserError(f"SRC={str(src)!r} has no {missing[0]}/ folder; expected {src}/train/<class>/<image> and "
                        f"{src}/val/<class>/<image>, or torchvision's CIFAR files ({', '.join(_CIFAR)})")
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = sorted(e.name for e in (src / "train").iterdir() if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"SRC={str(src)!r}: train/ has {len(classes)} class folders; expected at least 2")
    to_idx = {c: i for i, c in enumerate(classes)}
    extra = sorted(e.name for e in (src / "val").iterdir() if e.is_dir() and not e.name.startswith(".")
                   and e.name not in to_idx)
    if extra:
        raise DataError(f"SRC={str(src)!r}: val/ has class folder {extra[0]!r} that train/ lacks")
    items = {}
    for split in SPLITS:
        items[split] = make_dataset(str(src / split), to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not items[split]:
            raise DataError(f"SRC={str(src)!r}: {split}/ holds no images (extensions {', '.join(IMG_EXTENSIONS)})")
    return "imagefolder", classes, items


def fixed_order(n: int, seed: int, split: str) -> np.ndarray:
    """The stored order of a split's ``n`` source items: a permutation seeded by (seed, split)."""
    g = torch.Generator().manual_seed(int(seed) * 2 + SPLITS.index(split))
    return torch.randperm(n, generator=g).numpy()


# ------------------------------------------------------------------------------------------------- shards

def encode(item: Any, image_size: int, quality: int) -> bytes:
    """One source image (a path or an HxWx3 uint8 array) as JPEG bytes, shorter side ``image_size``."""
    from PIL import Image

    from .folders import rgb_loader

    image = Image.fromarray(item) if isinstance(item, np.ndarray) else rgb_loader(item)
    w, h = image.size
    scale = image_size / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)  # fixed metadata: the same samples give the same bytes
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    return info, io.BytesIO(data)


def _write_shard(path: str, first: int, items: Sequence, image_size: int, quality: int) -> dict:
    """Write one complete shard (a temporary file renamed into place); returns its index entry."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for j, (item, label) in enumerate(items):
                key = sample_key(first + j)
                tar.addfile(*_member(f"{key}.jpg", encode(item, image_size, quality)))
                tar.addfile(*_member(f"{key}.cls", str(int(label)).encode()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return _entry(Path(path), len(items))


def _entry(path: Path, count: int) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"name": path.name, "samples": count, "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _complete(path: Path, first: int, count: int) -> bool:
    """Whether a shard on disk is whole (whole tar records) and holds exactly the expected members (names and
    order; headers only)."""
    expected = [f"{sample_key(first + j)}.{ext}" for j in range(count) for ext in ("jpg", "cls")]
    if path.stat().st_size % tarfile.RECORDSIZE:  # tarfile pads what it writes to whole records
        return False
    try:
        with tarfile.open(path, "r:") as tar:
            names = [m.name for m in tar]  # a truncated member raises ReadError here
        return names == expected
    except (tarfile.TarError, OSError, EOFError):
        return False


def content_digest(index: dict) -> str:
    """SHA-256 over what defines the data: format, classes, image size, every shard's name, count, hash."""
    core = {"format": index["format"], "classes": index["classes"], "image_size": index["image_size"],
            "splits": {s: [[e["name"], e["samples"], e["sha256"]] for e in index["splits"][s]["shards"]]
                       for s in SPLITS}}
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------- pack

def pack(src: Any, out: Any, *, image_size: int = 256, shard_size: int = 1000, seed: int = 0, quality: int = 90,
         workers: int = 1, progress: bool = True) -> dict:
    """Pack ``src`` into shards under ``out`` (see the module docstring); returns the index."""
    from tqdm.auto import tqdm

    from ..records import atomic_write_json

    for name, v, low in (("--image-size", image_size, 1), ("--shard-size", shard_size, 1), ("--workers", workers, 1)):
        if not isinstance(v, int) or v < low:
            raise UserError(f"{name}={v!r} is not allowed; expected an integer >= {low}")
    if not 1 <= quality <= 95:
        raise UserError(f"--quality={quality!r} is not allowed; expected an integer in [1, 95]")
    src, out = Path(src), Path(out)
    kind, classes, items = _source(src)
    settings = {"format": FORMAT, "source": str(src.resolve()), "kind": kind, "image_size": image_size,
                "shard_size": shard_size, "seed": seed, "quality": quality, "classes": classes,
                "samples": {s: len(items[s]) for s in SPLITS}}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"OUT={str(out)!r}: cannot create it ({exc.strerror or exc}); expected a folder that "
                        "exists or can be created, in a writable place") from None
    state = out / STATE_FILE
    if state.is_file():
        try:
            before = json.loads(state.read_text())
        except ValueError:
            before = None
        if before is not None and before != settings:
            diff = next((k for k in settings if before.get(k) != settings[k]), "format")
            raise UserError(f"OUT={str(out)!r} holds a pack with {diff}={before.get(diff)!r}, this one has "
                            f"{diff}={settings[diff]!r}; rerun with the same settings to finish it, or use a new OUT")
    atomic_write_json(state, settings)
    for tmp in out.glob(".*.tar.tmp"):  # a shard being written when the last pack stopped
        tmp.unlink()

    jobs, entries = [], {s: [] for s in SPLITS}
    for split in SPLITS:
        order = fixed_order(len(items[split]), seed, split)
        for i, first in enumerate(range(0, len(order), shard_size)):
            chunk = order[first:first + shard_size]
            path = out / shard_name(split, i)
            entries[split].append((path, first, len(chunk)))
            if not (path.is_file() and _complete(path, first, len(chunk))):
                jobs.append((str(path), first, [items[split][k] for k in chunk], image_size, quality))
    total = sum(len(v) for v in items.values())
    bar = tqdm(total=total, initial=total - sum(len(j[2]) for j in jobs), desc="pack", unit="img",
               disable=not progress, dynamic_ncols=True)
    try:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for job, _ in zip(jobs, pool.map(_write_shard, *zip(*jobs))):
                    bar.update(len(job[2]))
        else:
            for job in jobs:
                _write_shard(*job)
                bar.update(len(job[2]))
    finally:
        bar.close()
    index = {"format": FORMAT, "image_size": image_size, "classes": classes, "num_classes": len(classes),
             "seed": seed, "shard_size": shard_size, "quality": quality, "source": {"kind": kind, "path": str(src)},
             "splits": {}}
    for split in SPLITS:
        shards = [_entry(path, count) for path, _, count in entries[split]]
        index["splits"][split] = {"samples": len(items[split]), "bytes": sum(e["bytes"] for e in shards),
                                  "shards": shards}
    index["fingerprint"] = content_digest(index)
    atomic_write_json(out / INDEX_FILE, index)
    return index
