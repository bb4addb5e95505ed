"""A run's identity, its directory and its record (``result.json``).

One place owns the run-directory layout and the record schema (documented in the README):

    <runs_dir>/<run_id>/
        config.yaml     the resolved config
        result.json     the record: status, what was trained, cost, metrics (atomic writes)
        metrics.jsonl   one JSON line per logging step
        checkpoint.pt   the last complete checkpoint (see :mod:`mixer_scaling.checkpoint`)
        .lock           held by the run's one writer while it runs (see :mod:`mixer_scaling.locks`)
        wandb/          the W&B client's files (offline runs can be synced later)

``run_id`` is a short hash of the resolved config's identity: the keys the schema
(:mod:`mixer_scaling.schema`) declares as changing what a run computes, without paths, logging, W&B, the
device or evaluation settings, as dora does: the same experiment always lands in the same directory,
which is what makes reruns resume and finished runs skip. A data set that is a folder
of files enters it by a fingerprint of those files (:mod:`.data.fingerprint`), not by its path: a run
on another tree is another run, a tree moved elsewhere keeps its runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from .errors import CorruptFile

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_CHECKPOINT_FILE = "checkpoint.best.pt"  # the weights early stopping chose (model only)

# Record states. `interrupted`: stopped by a signal (preemption, time limit) with a checkpoint to resume from.
RUNNING, INTERRUPTED, DONE, FAILED = "running", "interrupted", "done", "failed"
STATUSES = (RUNNING, INTERRUPTED, DONE, FAILED)

def identity(cfg: DictConfig | Mapping) -> dict:
    """The part of the resolved config that defines the experiment: the keys the schema declares as
    identity (:func:`mixer_scaling.schema.identity`)."""
    from .schema import identity as schema_identity

    return schema_identity(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg))


def run_identity(cfg: DictConfig | Mapping) -> dict:
    """:func:`identity` plus, for pre-training data that is a folder of files, its fingerprint
    (``data.fingerprint``: the digest, see :mod:`.data.fingerprint`); the embedded data adds nothing.
    Few-shot sets are evaluation, not identity (their fingerprint is in the record's ``evaluation``).

    Reads the data folder's listing (``stat`` only, once per process per tree); a missing root raises
    the usual one-line :class:`~.errors.DataError`."""
    from .data.fingerprint import data_fingerprints

    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    ident = identity(tree)
    fingerprint = data_fingerprints(tree).get("data")
    if fingerprint is not None:
        ident["data"] = {**ident.get("data", {}), "fingerprint": fingerprint["digest"]}
    return ident


def run_id_of(cfg: DictConfig | Mapping, length: int = 10) -> str:
    """Stable short hash of :func:`run_identity` (canonical JSON, sorted keys)."""
    blob = json.dumps(run_identity(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:length]


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a fsynced temp file beside ``path`` (``.<name>.<random>.tmp``) and return it.

    On any failure (ENOSPC, a signal) the temp file is removed before the error propagates.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``.

    Readers see the old file or the new one, never a partial one, even if we are killed mid-write.
    """
    os.replace(write_temp(path, data), path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


#: Fields of a record that must be JSON objects when present (null counts as absent), and the objects
#: inside them that must be too: what a run, a table row and ``sweep status`` read with ``.get``.
MAPPING_FIELDS = ("metrics", "metrics.fewshot", "config", "config.data", "error")


def record_problem(rec: Mapping[str, Any]) -> str:
    """What makes a parsed record unusable as a row ('' when nothing): a field of :data:`MAPPING_FIELDS`
    that is not an object (``"metrics": [1, 2]``, ``"config": "lr=1"``), or a few-shot entry that is not
    an object of k → accuracy."""
    for dotted in MAPPING_FIELDS:
        node: Any = rec
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None and not isinstance(node, Mapping):
            return f"field {dotted} is a JSON {_json_kind(node)}, not an object"
    fewshot = _as_mapping(_as_mapping(rec.get("metrics")).get("fewshot"))
    for dataset, per_k in fewshot.items():
        if per_k is not None and not isinstance(per_k, Mapping):
            return f"field metrics.fewshot.{dataset} is a JSON {_json_kind(per_k)}, not an object of k → accuracy"
    return ""


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value),
                                                                                              type(value).__name__)


def read_record(run_dir: Path) -> dict | None:
    """The run's record, or None when there is none yet; :class:`CorruptFile` (naming the file and what is
    wrong, in one line) if it is empty, unreadable, not JSON (truncated or damaged), not a JSON object, or
    has a field of the wrong shape (:func:`record_problem`). Every reader (a run deciding whether it is
    done, ``collect``, ``sweep status``) therefore treats such a record alike: a rerun sets it aside."""
    path = Path(run_dir) / RESULT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CorruptFile(path, f"unreadable ({type(exc).__name__}: {exc.strerror or exc})") from exc
    try:
        record = json.loads(data)
    except json.JSONDecodeError as exc:
        if not data.strip():
            raise CorruptFile(path, "empty file") from exc
        raise CorruptFile(path, f"invalid JSON at line {exc.lineno} column {exc.colno} of {len(data)} bytes: "
                                f"{exc.msg} (truncated or damaged)") from exc
    except ValueError as exc:  # not UTF-8 (UnicodeDecodeError) and the like
        raise CorruptFile(path, f"not a JSON text ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(record, dict):
        raise CorruptFile(path, f"a JSON {type(record).__name__}, not a record object")
    problem = record_problem(record)
    if problem:
        raise CorruptFile(path, problem)
    return record


def set_aside(path: Path) -> Path:
    """Move a damaged file to ``<name>.corrupt`` (``.corrupt.1``, … if taken): kept for inspection, never read."""
    path = Path(path)
    target, n = path.with_name(path.name + ".corrupt"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, target)
    return target


def read_record_or_set_aside(run_dir: Path) -> tuple[dict | None, str | None]:
    """The record, or (None, what was wrong) after moving a damaged one aside: the run starts a fresh record."""
    try:
        return read_record(run_dir), None
    except CorruptFile as exc:
        aside = set_aside(Path(run_dir) / RESULT_FILE)
        return None, f"{exc}; moved to {aside.name} and started a new record"


class Record:
    """The mutable record of one run; every :meth:`save` rewrites ``result.json`` atomically."""

    def __init__(self, run_dir: Path, fields: dict):
        self.run_dir = Path(run_dir)
        self.fields = fields

    @classmethod
    def open(cls, run_dir: Path, base: dict) -> "Record":
        """Start or continue a record: fields of a previous attempt (counters, restarts, events) are kept.

        A damaged ``result.json`` is moved aside and the record starts afresh; a previous attempt that
        never closed its record (status still ``running``: SIGKILL, out of memory, node failure) is noted.
        """
        previous, problem = read_record_or_set_aside(run_dir)
        previous = previous or {}
        fields = {**previous, **base}
        fields.setdefault("started_at", _now())
        fields["attempts"] = previous.get("attempts", 0) + 1
        fields.setdefault("metrics", {})
        fields["events"] = list(previous.get("events", []))
        record = cls(run_dir, fields)
        if problem:
            record.note(problem)
        if previous.get("status") == RUNNING:
            record.note(f"attempt {previous.get('attempts', '?')} ended without closing its record "
                        "(killed by SIGKILL, out of memory or a node failure)")
        return record

    def note(self, message: str) -> "Record":
        """Add an event (a recovery, a fallback) to the record, and say it once in the log."""
        log.warning("%s: %s", self.run_dir.name, message)
        self.fields["events"].append({"attempt": self.fields.get("attempts"), "at": _now(), "message": message})
        return self

    def update(self, **kw) -> "Record":
        self.fields.update(kw)
        return self

    def save(self, status: str | None = None) -> None:
        if status is not None:
            assert status in STATUSES, status
            self.fields["status"] = status
        self.fields["updated_at"] = _now()
        atomic_write_json(self.run_dir / RESULT_FILE, self.fields)

    def __getitem__(self, key):
        return self.fields[key]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logging step, appended and flushed as we go.

    On resume from a checkpoint at step s, lines logged after s (by the attempt that was cut off) are
    dropped, so the file of a resumed run ends like the file of an uninterrupted one.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if row.get("step", 0) <= step:
                kept.append(line)
        atomic_write_bytes(self.path, "".join(l + "\n" for l in kept).encode())

    def append(self, row: Mapping) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # blank, or cut by a kill
                continue
        return rows


def record_failure(cfg: DictConfig, exc: BaseException) -> None:
    """A dispatched run that failed before it wrote a record (e.g. unreadable data) still leaves one, so a
    sweep never shows it as pending or lost. Only a missing or ``running`` record is replaced: a done
    run stays done (e.g. a peer dying after the record was written), an interrupted one resumable, a
    failed one keeps its own account; and never while another live process holds the run directory's
    lock (:mod:`.locks`): that process is the run's writer, and its record says ``running`` truly."""
    import traceback

    from . import locks
    from .errors import UserError

    try:
        run_id = run_id_of(cfg)
    except UserError:  # its data is gone (a missing root): without it the run has no identity, no directory
        return
    run_dir = Path(cfg.runs_dir) / run_id
    if run_dir.is_dir() and locks.run_holder(run_dir) is not None:
        return  # another live process is this run's writer: its `running` record is true
    try:
        previous, _ = read_record_or_set_aside(run_dir) if run_dir.is_dir() else (None, None)
        if previous and previous.get("status") != RUNNING:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        atomic_write_json(run_dir / RESULT_FILE, {
            **(previous or {}), "run_id": run_id, "status": FAILED, "study": cfg.study, "model": cfg.model.name,
            "family": cfg.model.family, "fraction": float(cfg.data.fraction), "seed": int(cfg.seed),
            "error": {"type": type(exc).__name__, "message": message, "traceback": traceback.format_exc()},
            "updated_at": _now(),
        })
    except OSError as write_error:  # a read-only runs_dir, say: the failure itself is what the caller raises
        log.warning("could not record the failure of run %s in %s: %s", run_id, run_dir,
                    write_error.strerror or write_error)
