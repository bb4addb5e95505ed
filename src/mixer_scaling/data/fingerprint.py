"""What a run's data set is, as a digest of its files' names and sizes (``stat`` only, no image is read).

A run's identity (:func:`mixer_scaling.records.run_id_of`) must change when its data changes and stay
the same when the data only moves; a path says neither. So for a data set that is a folder of the
user's files, the identity holds a fingerprint of the files instead of the path (``data.root`` and
``fewshot.root`` are not part of it):

* ``imagefolder`` (``data=imagefolder``, and the ``imagefolder`` few-shot set under ``fewshot.root``):
  for each split (``train_dir``, ``val_dir``; ``train/`` and ``val/`` for the few-shot set) every class
  folder, and in it every file ImageFolder would load (its extensions, symlinks followed, the same
  walk), by its path relative to the split and its size in bytes. The digest (SHA-256 of that list,
  16 hex digits) goes into the run id; the record (``data_fingerprint``) also keeps, per split, the
  number of classes, files and bytes. A file added, removed, renamed, moved to another class or
  changed in size changes it; a copy of the tree elsewhere keeps it. A file rewritten in place with
  the same size does not (its bytes are not read: that would cost a pass over the data).
* ``shards`` (``data=shards``): the content digest ``mixer-scaling data pack`` wrote into the folder's
  ``index.json`` (SHA-256 over the classes, the image size and every shard's name, sample count and
  SHA-256), read from the index after checking that every listed shard is there with its size (``stat``
  only, see :func:`.shards.read_index`); the record keeps, per split, the classes, samples (``files``)
  and bytes. Re-packing with other settings or other images changes it; a copy elsewhere keeps it.
* ``synthetic`` data and the ``digits`` and ``synthetic_heldout`` few-shot sets are defined by the
  config: no fingerprint, and their run ids are what they were before fingerprints existed.
* ``cifar10``/``cifar100``: torchvision checks each file against its MD5 sum at every load, so the
  data set is its name: no fingerprint either.

A fingerprint is computed once per process per tree (a sweep of a thousand cells on one tree walks it
once). A process that lives on (a notebook) re-checks a cached one after :data:`RECHECK_S` seconds by the
modification times of the split and class folders, so a file added, removed or renamed meanwhile is seen.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError

DIGEST_CHARS = 16  # hex digits of the SHA-256 kept: what the run id holds
#: A cached fingerprint is used as it is for this long; after that, the modification times of its split
#: and class folders are compared (a file added, removed or renamed changes them) and the tree walked
#: again only if they changed.
RECHECK_S = 30.0
_CACHE: dict[tuple, tuple] = {}  # (real root, splits) -> (checked at, folder modification times, fingerprint)


def _extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS  # what ImageFolder loads

    return tuple(e.lower() for e in IMG_EXTENSIONS)


def _class_folders(split: Path) -> list[os.DirEntry]:
    # As torchvision's find_classes: every sub-folder (a symlink to a folder counts), sorted by name.
    with os.scandir(split) as it:
        return sorted((e for e in it if e.is_dir()), key=lambda e: e.name)


def _split_key(split: Path) -> tuple:
    """What changes when a file is added, removed or renamed in a split: its folders' modification times."""
    try:
        st = split.stat()
        return (st.st_mtime_ns, tuple((e.name, e.stat().st_mtime_ns) for e in _class_folders(split)))
    except OSError:
        return ("unreadable",)


def _walk_split(split: Path, h, extensions: tuple[str, ...]) -> dict[str, int]:
    classes = files = size = 0
    for entry in _class_folders(split):
        classes += 1
        h.update(f"class\0{entry.name}\0".encode("utf-8", "surrogateescape"))
        base = Path(entry.path)
        # As torchvision's make_dataset: os.walk with symlinks followed, folders and names sorted.
        for folder, _, names in sorted(os.walk(base, followlinks=True)):
            for name in sorted(names):
                if not name.lower().endswith(extensions):
                    continue
                path = os.path.join(folder, name)
                try:
                    n = os.stat(path).st_size
                except OSError:  # a dangling link: the build names it when it reads the file
                    n = -1
                rel = os.path.relpath(path, base)
                h.update(f"{rel}\0{n}\0".encode("utf-8", "surrogateescape"))
                files += 1
                size += max(n, 0)
    return {"classes": classes, "files": files, "bytes": size}


def image_folder_fingerprint(root: Any, splits: Mapping[str, str], key: str = "data") -> dict:
    """The fingerprint of an ImageFolder tree: ``{"digest", "splits": {role: {classes, files, bytes}}}``.

    ``splits`` maps a role (``train``, ``val``) to its folder under ``root``. A root or split folder that
    is not there raises the same one-line :class:`DataError` as building the set would."""
    root_path = Path(str(root))
    if not root_path.is_dir():
        raise DataError(f"{key}.root={str(root)!r} does not exist; expected an ImageFolder tree with "
                        f"{'/ and '.join(splits.values())}/ class folders")
    for folder in splits.values():
        if not (root_path / folder).is_dir():
            raise DataError(f"{key}.root={str(root)!r} has no {folder}/ folder; expected "
                            f"{root_path}/{folder}/<class>/<image>")
    cache_key = (os.path.realpath(root_path), tuple(splits.items()))
    cached = _CACHE.get(cache_key)
    now = time.monotonic()
    if cached and now - cached[0] < RECHECK_S:
        return cached[2]
    folders = tuple(_split_key(root_path / folder) for folder in splits.values())
    if cached and cached[1] == folders:
        _CACHE[cache_key] = (now, folders, cached[2])
        return cached[2]
    h, parts, extensions = hashlib.sha256(b"imagefolder-v1\0"), {}, _extensions()
    for role, folder in splits.items():
        h.update(f"split\0{role}\0".encode())
        try:
            parts[role] = _walk_split(root_path / folder, h, extensions)
        except OSError as exc:
            raise DataError(f"{key}.root={str(root)!r}: cannot list {folder}/ ({exc.strerror or exc})") from None
    fp = {"kind": "imagefolder", "digest": h.hexdigest()[:DIGEST_CHARS], "splits": parts}
    _CACHE[cache_key] = (now, folders, fp)
    return fp


def data_fingerprints(tree: Mapping) -> dict[str, dict]:
    """``{"data": fingerprint, "fewshot": fingerprint}`` of a resolved run config (plain data), for the
    groups whose data is a folder of files (see the module docstring); empty for the embedded data.

    Raises the one-line :class:`DataError` of a missing root (few-shot: the same lines as building the
    set, :func:`.fewshot_sets.check_user_root`)."""
    out: dict[str, dict] = {}
    data = tree.get("data") if isinstance(tree, Mapping) else None
    if isinstance(data, Mapping) and data.get("name") == "imagefolder":
        root = data.get("root")
        if root in (None, "", "???"):
            raise DataError("data.root is not set; expected an ImageFolder tree with train/ and val/ class "
                            "folders, e.g. data.root=/data/imagefolder")
        out["data"] = image_folder_fingerprint(root, {"train": str(data.get("train_dir", "train")),
                                                      "val": str(data.get("val_dir", "val"))}, key="data")
    if isinstance(data, Mapping) and data.get("name") == "shards":
        from .shards import fingerprint

        if data.get("root") in (None, "", "???"):
            raise DataError("data.root is not set; expected a folder of shards with index.json (made by "
                            "mixer-scaling data pack), e.g. data.root=/data/shards")
        out["data"] = fingerprint(data.get("root"), key="data")
    fewshot = tree.get("fewshot") if isinstance(tree, Mapping) else None
    if isinstance(fewshot, Mapping):
        names = fewshot.get("datasets")
        names = [names] if isinstance(names, str) else list(names) if isinstance(names, (list, tuple)) else []
        if "imagefolder" in names:
            from .fewshot_sets import check_user_root

            check_user_root("imagefolder", fewshot)
            out["fewshot"] = image_folder_fingerprint(fewshot.get("root"), {"train": "train", "val": "val"},
                                                      key="fewshot")
    return out


def clear_cache() -> None:
    """Forget the fingerprints computed so far in this process."""
    _CACHE.clear()
