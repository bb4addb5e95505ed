"""Sharded data (``data=shards``): webdataset tar shards with a small ``index.json``, read by index.

Layout of ``data.root`` (written by ``mixer-scaling data pack``, :mod:`.pack`)::

    index.json              # per split: shard names, sample counts, byte sizes, sha256; classes; fingerprint
    train-000000.tar ...    # <key>.jpg (or .jpeg/.png/.webp) + <key>.cls (the label as decimal text)
    val-000000.tar ...

The samples of a split are stored in one fixed, seeded shuffled order (the pack's ``--seed``), keys
``0000000000``, ``0000000001``, ... in that order, so sample ``i`` of a split is at shard
``searchsorted(cumsum(counts), i)``. Everything here works from the per-shard counts: nothing holds a
per-sample list of the data set.

Training order (:class:`ShardOrder`): the ``data.fraction`` subset is the first round(f * N) samples
(a prefix of the fixed order, so 3% ⊂ 10% ⊂ 30% ⊂ 100% by construction, each class-balanced in
expectation). Epoch ``e`` reads the subset's shards (the last one cut at the prefix end) in an order
seeded by (run seed, e), and permutes each window of ``data.shuffle_buffer`` consecutive samples of that
stream (the windows start at an offset drawn per epoch) with a generator seeded by (run seed, e, window).
It is a shuffle buffer whose output is a pure function of (seed, epoch, position), computed with
O(shards + buffer) memory: a classic reservoir buffer's output depends on everything read before it, so
a rank, a worker or a resumed run would have to replay the epoch to know its samples. A buffer larger
than a shard mixes several shards per window. ``data.shuffle_buffer=0`` keeps the samples in the order
of the (shuffled) shards. As :class:`mixer_scaling.stream.StreamSampler`: step ``s``
takes positions ``[s*B, (s+1)*B)`` of the endless stream of epochs, each rank the strided share
``rank::world_size`` of that global batch (disjoint, equal counts), so a run resumed at a step, on any
number of ranks, continues with the same samples. Each sample's augmentation draws come from generators
seeded by (run seed, its stream position), so they too are the same for any number of workers or ranks
and after a resume. Reads are random access within a window (wids's indexed tar, a few shards open at a
time per process); DataLoader workers get whole batches and return them in order.

Checks: at start-up the index (format, counts summing to the split sizes, classes) and every listed
shard's existence and byte size (a truncated or replaced shard differs in size) — ``stat`` only. While
reading, a shard whose samples disagree with the index, a sample without its label or image, an
unreadable image or a label out of range raise :class:`DataError` naming the shard and the sample key.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError, one_line
from .common import check_subset

INDEX_FILE = "index.json"
FORMAT = "mixer-scaling-shards/1"
SPLITS = ("train", "val")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
KEY_DIGITS = 10
OPEN_SHARDS = 8  # shards kept open (mmapped) per process: a shuffle window spans a few


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def sample_key(i: int) -> str:
    return f"{i:0{KEY_DIGITS}d}"


def _seed(*parts: Any) -> int:
    """A 63-bit generator seed from any tuple (no overflow for large run seeds or epochs)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# --------------------------------------------------------------------------------------------- the index

def read_index(root: Any, key: str = "data") -> dict:
    """``root/index.json``, checked against itself and the shard files on disk (``stat`` only).

    Raises one-line :class:`DataError` for a missing or unparsable index, a format it does not know, a
    split missing, counts that do not sum to the split size, and a listed shard that is missing or whose
    size differs from the index (truncated, or rewritten since)."""
    root = Path(str(root))
    path = root / INDEX_FILE
    if not root.is_dir():
        raise DataError(f"{key}.root={str(root)!r} does not exist; expected a folder of shards with {INDEX_FILE} "
                        "(made by mixer-scaling data pack)")
    if not path.is_file():
        partial = " (a pack was interrupted: rerun mixer-scaling data pack to finish it)" \
            if any(root.glob("*.tar")) else ""
        raise DataError(f"{path} is missing; {key}.root must be a folder written by mixer-scaling data pack{partial}")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON ({one_line(exc)}); re-pack the data") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DataError(f"{path} has format {got!r}; expected {FORMAT!r} (written by mixer-scaling data pack)")
    classes = index.get("classes")
    if not isinstance(classes, list) or len(classes) < 2:
        raise DataError(f"{path}: 'classes' must list at least 2 class names")
    if not isinstance(index.get("fingerprint"), str) or len(index["fingerprint"]) < 16:
        raise DataError(f"{path} has no content fingerprint (a hex digest); re-pack the data")
    for split in SPLITS:
        info = (index.get("splits") or {}).get(split)
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list) or not info["shards"]:
            raise DataError(f"{path} lists no {split} shards; expected splits.{split}.shards")
        try:
            counts = [int(s["samples"]) for s in info["shards"]]
            sizes = [int(s["bytes"]) for s in info["shards"]]
            names = [str(s["name"]) for s in info["shards"]]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: every {split} shard needs name, samples and bytes") from None
        if sum(counts) != info.get("samples") or min(counts) < 1:
            raise DataError(f"{path}: the {split} shards' sample counts sum to {sum(counts)}, the index says "
                            f"{info.get('samples')} samples (inconsistent index; re-pack the data)")
        for name, size in zip(names, sizes):
            if "/" in name or name.startswith("."):
                raise DataError(f"{path}: shard name {name!r} is not a file name in {key}.root")
            try:
                on_disk = os.stat(root / name).st_size
            except FileNotFoundError:
                raise DataError(f"shard {root / name} is listed in {INDEX_FILE} but missing (restore it, or rerun "
                                "mixer-scaling data pack to redo it)") from None
            if on_disk != size:
                what = "truncated" if on_disk < size else "larger than written"
                raise DataError(f"shard {root / name} is {on_disk} bytes, {INDEX_FILE} says {size} ({what}; "
                                "re-pack the data, or rerun mixer-scaling data pack to redo it)")
    return index


def fingerprint(root: Any, key: str = "data") -> dict:
    """The run-identity fingerprint of a shard folder, from its index (no shard is read): the content
    digest the pack wrote (SHA-256 over the classes, image size and every shard's name, count and
    SHA-256), plus per split the classes, samples and bytes."""
    index = read_index(root, key)
    parts = {split: {"classes": len(index["classes"]), "files": index["splits"][split]["samples"],
                     "bytes": sum(int(s["bytes"]) for s in index["splits"][split]["shards"])} for split in SPLITS}
    return {"kind": "shards", "digest": str(index["fingerprint"])[:16], "splits": parts}


# ------------------------------------------------------------------------------------------ random access

class ShardReader:
    """Sample ``i`` of one split, as ``(PIL image, label)``, through wids's indexed tar reader.

    Holds the per-shard counts (numpy) and up to :data:`OPEN_SHARDS` open shards; pickles without them
    (a DataLoader worker opens its own)."""

    def __init__(self, root: Path, split: str, index: Mapping):
        self.root, self.split = Path(root), split
        info = index["splits"][split]
        self.names = [s["name"] for s in info["shards"]]
        self.counts = np.asarray([int(s["samples"]) for s in info["shards"]], dtype=np.int64)
        self.ends = np.cumsum(self.counts)
        self.num_classes = len(index["classes"])
        self._open: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getstate__(self):
        return {**self.__dict__, "_open": OrderedDict()}

    def locate(self, i: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.ends, i, side="right"))
        return shard, int(i - (self.ends[shard - 1] if shard else 0))

    def _shard(self, shard: int):
        from wids.wids import IndexedTarSamples

        if self._pid != os.getpid():  # a forked worker: its parent's maps are not its own to close
            self._open, self._pid = OrderedDict(), os.getpid()
        tar = self._open.get(shard)
        if tar is not None:
            self._open.move_to_end(shard)
            return tar
        path = self.root / self.names[shard]
        try:
            tar = IndexedTarSamples(path=str(path))
        except Exception as exc:
            raise DataError(f"shard {path} is not a readable tar ({one_line(exc)}); re-pack the data") from None
        if len(tar) != self.counts[shard]:
            tar.close()
            raise DataError(f"shard {path} holds {len(tar)} samples, {INDEX_FILE} says {self.counts[shard]} "
                            "(inconsistent index; re-pack the data)")
        self._open[shard] = tar
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)[1].close()
        return tar

    def _sample(self, i: int) -> tuple[dict, str, str]:
        shard, offset = self.locate(i)
        path = self.root / self.names[shard]
        try:
            sample = self._shard(shard)[offset]
        except DataError:
            raise
        except Exception as exc:  # wids asserts that the files of a sample share a key
            raise DataError(f"shard {path}: sample {offset} is unreadable ({one_line(exc)}); "
                            "re-pack the data") from None
        key = sample.get("__key__")
        if key != sample_key(i):
            raise DataError(f"shard {path}: sample {offset} has key {key!r}, expected {sample_key(i)!r} "
                            "(shards out of order or not from this index)")
        return sample, str(path), key

    def label(self, i: int) -> int:
        """The label of sample ``i`` (its ``.cls`` member only; the image is not decoded)."""
        sample, path, key = self._sample(i)
        return self._label(sample, path, key)

    def _label(self, sample: dict, path: str, key: str) -> int:
        data = sample.get(".cls")
        if data is None:
            raise DataError(f"shard {path}: sample {key} has no label ({key}.cls missing)")
        try:
            y = int(data.read().decode().strip())
        except ValueError:
            raise DataError(f"shard {path}: sample {key} has a label that is not an integer") from None
        if not 0 <= y < self.num_classes:
            raise DataError(f"shard {path}: sample {key} has label {y}, outside [0, {self.num_classes})")
        return y

    def __getitem__(self, i: int):
        from PIL import Image

        from .folders import check_mode

        sample, path, key = self._sample(int(i))
        y = self._label(sample, path, key)
        ext = next((e for e in IMAGE_EXTS if f".{e}" in sample), None)
        if ext is None:
            raise DataError(f"shard {path}: sample {key} has no image ({key}.jpg/.png/.webp missing)")
        try:
            image = Image.open(sample[f".{ext}"])
            check_mode(image, f"{key}.{ext} in shard {path}")
            return image.convert("RGB"), y
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"shard {path}: sample {key} has an unreadable image ({one_line(exc)})") from None


class ShardSplit(Dataset):
    """A split of a shard folder as a map-style data set of ``(x in [-1, 1], label)``; the validation
    set (``labels()`` reads the ``.cls`` members only)."""

    def __init__(self, reader: ShardReader, transform: Callable, classes: list[str]):
        self.reader, self.transform, self.classes = reader, transform, classes

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        image, y = self.reader[int(i)]
        return self.transform(image), y

    def labels(self) -> np.ndarray:
        return np.asarray([self.reader.label(i) for i in range(len(self))], dtype=np.int64)


# ---------------------------------------------------------------------------------------- training order

class ShardOrder:
    """The training stream's order over the prefix subset (see the module docstring).

    ``counts``: samples per shard of the whole split, in the fixed order; ``size``: the subset (a prefix);
    ``buffer``: the shuffle window (0: shard order only)."""

    def __init__(self, counts: np.ndarray, size: int, seed: int, buffer: int):
        ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        k = int(np.searchsorted(ends, size, side="left")) + 1  # shards the prefix touches
        self.starts = np.concatenate([[0], ends[:k - 1]])
        self.counts = np.minimum(ends[:k], size) - self.starts  # the last shard cut at the prefix end
        self.size, self.seed, self.window = int(size), int(seed), max(1, min(int(buffer) or 1, int(size)))
        self._epoch = self._shards = self._cum = None
        self._offset = 0
        self._windows: OrderedDict = OrderedDict()

    def _shard_order(self, epoch: int):
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_seed("shards", self.seed, epoch))
            order = torch.randperm(len(self.counts), generator=g).numpy()
            # the windows start at a random offset each epoch, so they do not fall on the same shard boundaries
            offset = int(torch.randint(self.window, (), generator=g))
            self._epoch, self._shards, self._cum, self._offset = epoch, order, np.cumsum(self.counts[order]), offset
            self._windows.clear()
        return self._shards, self._cum

    def _window(self, epoch: int, w: int) -> tuple[int, np.ndarray]:
        """Where window ``w`` of the epoch's stream starts, and its permutation."""
        got = self._windows.get(w)
        if got is None:
            start = max(0, w * self.window - self._offset)
            end = min(self.size, (w + 1) * self.window - self._offset)
            g = torch.Generator().manual_seed(_seed("window", self.seed, epoch, w))
            got = self._windows[w] = (start, torch.randperm(end - start, generator=g).numpy())
            while len(self._windows) > 4:
                self._windows.popitem(last=False)
        return got

    def indices(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Split indices (the fixed order) of ``positions`` (each in [0, size)) of epoch ``epoch``."""
        order, cum = self._shard_order(epoch)
        positions = np.asarray(positions, dtype=np.int64)
        stream = positions if self.window == 1 else self._shuffled(epoch, positions)
        unit = np.searchsorted(cum, stream, side="right")
        return self.starts[order[unit]] + stream - (cum[unit] - self.counts[order[unit]])

    def _shuffled(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        windows = (positions + self._offset) // self.window
        stream = np.empty_like(positions)
        for w in np.unique(windows):
            sel = windows == w
            start, perm = self._window(epoch, int(w))
            stream[sel] = start + perm[positions[sel] - start]
        return stream

    def global_batch(self, step: int, batch_size: int) -> np.ndarray:
        """The split indices of global batch ``step`` (positions ``[step*B, (step+1)*B)`` of the stream)."""
        pos = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.size)
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.indices(int(e), offsets[sel])
        return out


class ShardBatchSampler(Sampler[list[int]]):
    """Steps ``start_step .. total_steps-1`` of a :class:`ShardOrder`, each rank's strided share."""

    def __init__(self, order: ShardOrder, batch_size: int, total_steps: int, *, start_step: int = 0, rank: int = 0,
                 world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} is not divisible by the {world_size} data-parallel ranks")
        self.order, self.batch_size, self.total_steps = order, batch_size, total_steps
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield self.order.global_batch(step, self.batch_size)[self.rank::self.world_size].tolist()


class _PositionedBatches(ShardBatchSampler):
    """:class:`ShardBatchSampler` whose items are ``(index, (seed, stream position))``."""

    def __init__(self, *args, seed: int, **kw):
        super().__init__(*args, **kw)
        self.seed = seed

    def __iter__(self):
        bs, r, w = self.batch_size, self.rank, self.world_size
        for step in range(self.start_step, self.total_steps):
            indices = self.order.global_batch(step, bs)[r::w].tolist()
            yield [(i, (self.seed, step * bs + r + k * w)) for k, i in enumerate(indices)]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class _Batches:
    """A DataLoader whose worker errors come back as the one-line DataError raised in the worker."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            yield from self.loader
        except DataError as exc:
            # A worker's exception arrives as "Caught DataError in DataLoader worker ..." plus its traceback;
            # its last line is the original message.
            prefix = f"{DataError.__module__}.{DataError.__name__}: "
            lines = [ln for ln in str(exc).splitlines() if ln.startswith(prefix)]
            if lines:
                raise DataError(lines[-1][len(prefix):]) from None
            raise


class ShardTrainSet(Dataset):
    """The ``data.fraction`` prefix of the train split, with the training transform; ``train_loader``
    is what the engine reads (see the module docstring)."""

    def __init__(self, reader: ShardReader, size: int, transform: Callable, classes: list[str], buffer: int):
        self.reader, self.size, self.transform, self.classes, self.buffer = reader, size, transform, classes, buffer
        self.permutation: torch.Tensor | None = None  # data.permutation's pixel index, applied after the transform

    def _transform(self, image) -> torch.Tensor:
        x = self.transform(image)
        if self.permutation is None:
            return x
        from .permute import apply_permutation

        return apply_permutation(x, self.permutation)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item):
        """Sample ``i`` (an int), or ``(i, position)`` from :meth:`train_loader`: then its augmentation draws
        come from generators seeded by (seed, position in the stream), whatever process or rank reads it."""
        i, position = item if isinstance(item, tuple) else (item, None)
        if not 0 <= i < self.size:
            raise IndexError(i)
        image, y = self.reader[int(i)]
        if position is None:
            return self._transform(image), y
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        s = _seed("augment", *position)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.default_generator.manual_seed(s)  # the CPU generator only (torch.manual_seed costs ~1 ms)
        try:
            return self._transform(image), y
        finally:  # the caller's streams (dropout, mixup) stay as they were
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def order(self, seed: int) -> ShardOrder:
        return ShardOrder(self.reader.counts, self.size, seed, self.buffer)

    def train_loader(self, *, batch_size: int, total_steps: int, seed: int, start_step: int = 0, rank: int = 0,
                     world_size: int = 1, num_workers: int = 0, collate_fn: Callable | None = None,
                     pin_memory: bool = False):
        """This rank's ``(x, y)`` batches of steps ``start_step .. total_steps-1`` (its share of each global
        batch): the same samples, and the same augmentation of each (seeded by its position in the stream),
        for any number of workers or ranks and for a run resumed at ``start_step``."""
        sampler = _PositionedBatches(self.order(seed), batch_size, total_steps, start_step=start_step, rank=rank,
                                     world_size=world_size, seed=seed)
        loader = DataLoader(self, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                            pin_memory=pin_memory,
                            # building the loader never draws from the global RNG
                            generator=torch.Generator().manual_seed(seed + start_step + 1_000_003 * rank))
        return _Batches(loader)


def shard_sets(cfg: Mapping, image_size: int, fraction: float, seed: int) -> tuple[ShardTrainSet, ShardSplit, int]:
    """``(train subset, val set, full train size)`` of ``cfg['root']`` (a ``data`` group, plain)."""
    from .folders import transform

    root = Path(str(cfg["root"]))
    index = read_index(root)
    classes = [str(c) for c in index["classes"]]
    train_reader, val_reader = ShardReader(root, "train", index), ShardReader(root, "val", index)
    full = len(train_reader)
    n = check_subset(full, fraction, "the training images")
    flip = bool(cfg.get("flip", True))
    crop_scale = cfg.get("crop_scale") or (0.08, 1.0)
    crop_pct = float(cfg.get("crop_pct", 0.875))
    train_tf = transform(image_size, True, cfg.get("randaugment"), flip, crop_pct=crop_pct, crop_scale=crop_scale)
    val_tf = transform(image_size, False, crop_pct=crop_pct)
    buffer = int(cfg.get("shuffle_buffer", 10000) or 0)
    train = ShardTrainSet(train_reader, n, train_tf, classes, buffer)
    return train, ShardSplit(val_reader, val_tf, classes), full
