"""Training state on disk: saved atomically, loaded whole or not at all.

A checkpoint holds everything needed for a resumed run to continue bit for bit (on CPU) where the
interrupted one stopped: model, optimizer, scheduler, the step (the data position follows from it),
every RNG the run draws from, and the compute counters that add up across restarts.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .records import atomic_write_bytes

FORMAT_VERSION = 1


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


def save(path: Path, *, model, optimizer, scheduler, step: int, counters: dict, extra: dict | None = None) -> None:
    """Serialise to memory first, then one atomic write: a kill mid-save leaves the previous file intact."""
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {
        "format": FORMAT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "counters": dict(counters),
        "extra": extra or {},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    # Our own file (optimizer state holds plain Python objects, RNG states numpy arrays).
    return torch.load(path, map_location="cpu", weights_only=False)


def restore(ckpt: dict, *, model, optimizer, scheduler) -> None:
    getattr(model, "module", model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
