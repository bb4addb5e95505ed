"""Training state on disk: saved atomically, verified on load, with the previous one kept as a fallback.

A checkpoint holds everything needed for a resumed run to continue bit for bit (on CPU) where the
interrupted one stopped: model, optimizer, scheduler, the step (the data position follows from it),
every RNG the run draws from, and the compute counters that add up across restarts.

On disk, ``checkpoint.pt`` is what ``torch.save`` writes followed by a 48-byte trailer (magic, SHA-256
of the body, body length). ``torch.load`` still reads the file as it is; :func:`load` also checks the
trailer, so a truncated or damaged file is refused rather than half-loaded. A save writes the new
file to a fsynced temp file, then renames the current one to ``checkpoint.prev.pt`` and the temp file
to ``checkpoint.pt``. So at every instant, even if the process is killed mid-write or the disk fills
up, a complete checkpoint is on disk, and :func:`load_latest` resumes from the newest one that verifies.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CorruptFile
from .records import set_aside, write_temp

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
MAGIC = b"MXSCKPT2"
TRAILER = struct.Struct(f"<{len(MAGIC)}s32sQ")  # magic, sha256(body), len(body)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is kept."""


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` → ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    return body + TRAILER.pack(MAGIC, hashlib.sha256(body).digest(), len(body))


def decode(data: bytes, path: Path) -> dict:
    """The payload of a checkpoint file's bytes; :class:`CorruptFile` naming ``path`` if they do not verify."""
    if len(data) >= TRAILER.size and data[-TRAILER.size:].startswith(MAGIC):
        _, digest, length = TRAILER.unpack(data[-TRAILER.size:])
        body = data[:-TRAILER.size]
        if len(body) != length:
            raise CorruptFile(path, f"{len(body)} of {length} bytes (truncated)")
        if hashlib.sha256(body).digest() != digest:
            raise CorruptFile(path, "SHA-256 mismatch (damaged on disk)")
    elif data[:2] == b"PK" and data[-22:-18] == b"PK\x05\x06":
        body = data  # a complete zip without our trailer: a format-1 file, written before the trailer existed
    else:
        raise CorruptFile(path, f"{len(data)} bytes with no checkpoint trailer (truncated, or not a checkpoint)")
    try:
        # Our own file (optimizer state holds plain Python objects, RNG states numpy arrays).
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CorruptFile(path, f"torch.load failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def save(path: Path, *, model, optimizer, scheduler, step: int, counters: dict, extra: dict | None = None) -> None:
    """Serialise in memory, write a temp file, then rotate: current → ``checkpoint.prev.pt``, temp → current.

    If the write fails (ENOSPC, EIO), the half-written temp file is gone, the current checkpoint is
    untouched and :class:`CheckpointWriteError` says so.
    """
    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP
    data = encode({
        "format": FORMAT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "counters": dict(counters),
        "extra": extra or {},
    })
    prev = previous_path(path)
    # Drop the older one first: peak disk use is two checkpoints (current + the one being written).
    prev.unlink(missing_ok=True)
    try:
        tmp = write_temp(path, data)
    except OSError as exc:
        kept = f"; the previous checkpoint is kept at {path}" if path.exists() else ""
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CheckpointWriteError(f"could not write the checkpoint of step {step} ({len(data) / 2**20:.1f} MiB) "
                                   f"to {path.parent}: {reason}{kept}") from exc
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)


def save_weights(path: Path, *, model, step: int, score: float) -> None:
    """The model's weights alone (the best checkpoint of early stopping), verified and written atomically
    like :func:`save`, the one before kept as ``<name>.prev.pt``: a kill between this write and the next
    full checkpoint leaves on disk the weights that checkpoint's counters name (see :func:`load_weights_of`)."""
    path = Path(path)
    model = getattr(model, "module", model)
    data = encode({"format": FORMAT_VERSION, "step": step, "score": score, "model": model.state_dict()})
    prev = previous_path(path)
    try:
        tmp = write_temp(path, data)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CheckpointWriteError(f"could not write the best weights of step {step} to {path.parent}: {reason}") from exc
    if path.exists():
        os.replace(path, prev)
    os.replace(tmp, path)


def load_weights_of(path: Path, step: int) -> tuple[dict | None, list[str]]:
    """The weights file (``path`` or its ``.prev.pt``) saved at ``step``, verified; None if neither is.
    Also returns what was wrong on the way, one line each."""
    problems = []
    for candidate in (Path(path), previous_path(path)):
        try:
            state = load(candidate)
        except CorruptFile as exc:
            problems.append(f"{exc}; moved to {set_aside(candidate).name}")
            continue
        if state is not None and state["step"] == step:
            return state, problems
    problems.append(f"no weights file of step {step} verifies ({Path(path).name} or its .prev.pt)")
    return None, problems


def remove_partial_writes(path: Path) -> list[str]:
    """Remove temp files of writes to ``path`` cut off by a kill; one line each for the record.

    Only a dead writer's: a run calls this holding its directory's lock (:mod:`.locks`), and if another
    live process holds it, its temp files are writes in flight and are left alone."""
    from .locks import describe, run_holder

    other = run_holder(Path(path).parent)
    if other is not None:
        log.warning("not removing temp files in %s: %s holds the run directory", Path(path).parent, describe(other))
        return []
    problems = []
    for tmp in sorted(Path(path).parent.glob(f".{Path(path).name}.*.tmp")):
        problems.append(f"removed {tmp.name} ({tmp.stat().st_size} bytes), a checkpoint write "
                        "cut off by a kill; it was never loaded")
        tmp.unlink(missing_ok=True)
    return problems


def reported_weights(run_dir: Path, record: dict) -> tuple[dict, int, str]:
    """The weights a finished run's record reports (early stopping: the best step's, else the last
    checkpoint's), as ``(state_dict, step, file name)``; :class:`CorruptFile` if that file does not verify."""
    from .records import BEST_CHECKPOINT_FILE, CHECKPOINT_FILE

    run_dir = Path(run_dir)
    if record.get("early_stopped"):
        state, problems = load_weights_of(run_dir / BEST_CHECKPOINT_FILE, int(record["best_step"]))
        if state is None:
            raise CorruptFile(run_dir / BEST_CHECKPOINT_FILE, "; ".join(problems))
        return state["model"], int(state["step"]), BEST_CHECKPOINT_FILE
    state = load(run_dir / CHECKPOINT_FILE)
    if state is None:
        raise CorruptFile(run_dir / CHECKPOINT_FILE, "missing")
    return state["model"], int(state["step"]), CHECKPOINT_FILE


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (verified), None if there is none; :class:`CorruptFile` if it is damaged."""
    path = Path(path)
    if not path.exists():
        return None
    return decode(path.read_bytes(), path)


@dataclass
class Latest:
    """What :func:`load_latest` found: the newest checkpoint that verifies, and what was wrong on the way."""

    state: dict | None = None
    problems: list[str] = field(default_factory=list)


def load_latest(path: Path, *, tidy: bool = True) -> Latest:
    """Resume point: ``checkpoint.pt`` if it verifies, else ``checkpoint.prev.pt``, else none (from scratch).

    With ``tidy`` (rank 0 only, holding the run directory's lock, so no other process writes there) a
    file that fails to verify is moved aside to ``<name>.corrupt`` (kept for inspection, never loaded
    again) and temp files of writes cut off by a kill are removed. Every such finding is in ``problems``,
    one line each, for the record.
    """
    path = Path(path)
    found = Latest()
    if tidy:
        found.problems += remove_partial_writes(path)
    for candidate in (path, previous_path(path)):
        try:
            state = load(candidate)
        except CorruptFile as exc:
            found.problems.append(f"{exc}; moved to {set_aside(candidate).name}" if tidy else str(exc))
            continue
        if state is not None:
            found.state = state
            if candidate != path and not found.problems:
                found.problems.append(f"{path.name} is missing (a save was cut off between its renames)")
            if found.problems:
                found.problems.append(f"resuming from {candidate.name} (step {state['step']})")
            return found
    if found.problems:
        found.problems.append("no checkpoint verifies: training restarts from step 0")
    return found


def restore(ckpt: dict, *, model, optimizer, scheduler) -> None:
    getattr(model, "module", model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
