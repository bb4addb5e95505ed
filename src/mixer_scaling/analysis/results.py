"""The results table: one tidy row per run, built from ``result.json`` records or from W&B.

This module owns the table's schema. Columns, in order (:data:`COLUMNS`), then one column per
few-shot data set and k, ``fewshot_<dataset>_<k>`` (e.g. ``fewshot_digits_5``):

=================  ==============================================================================
run_id             the run's id (its directory name; the W&B run id for W&B runs)
family             ``mixer``, ``vit``, ``bit``, a timm family's label (``convnext``), ``other``
                   in the paper's tables
model              ``<family>/<size>``, e.g. ``mixer/b16``, ``convnext/convnext_atto`` (paper names
                   such as ``Mixer-B/16`` in the reference tables)
size, patch        e.g. ``b16``/16, ``r50x1``/<NA>, ``tiny``, ``convnext_atto``/<NA>
params             parameters with the head
flops_per_image    forward FLOPs per image (a multiply-add counts 2)
fraction           pre-training subset as a fraction of the full data set
train_size         examples in the pre-training subset
examples_seen      the pre-training budget the run was configured with (``train.examples_seen``)
examples_trained   examples actually trained on: steps × global batch (whole batches, so at least
                   the budget); records older than this field: steps × batch size when they have
                   them, else ``examples_seen``
epochs             examples_trained / train_size
seed               the run's seed
pretrain_flops     total pre-training FLOPs = 3 × flops_per_image × examples_trained (forward + backward):
                   what was trained, the record's ``train_flops``
device_hours       training wall time × devices
throughput         inference images per second (batch size swept, best kept)
val_top1           upstream validation top-1, a fraction in [0, 1]
select_top1        upstream top-1 on the held-out selection half of the validation split (what
                   early stopping and ``figures --best-over`` select on; never a reported metric)
best_step          the step whose weights were evaluated (early stopping; ``steps`` without it)
precision          what the run computed in (``bf16``, ``fp32``)
status             ``done``, ``failed``, ``running``, ``interrupted``
study              the study or sweep the run belongs to (the W&B group)
run_dir            where the record was read from (W&B URL for W&B runs)
fewshot_<d>_<k>    linear k-shot accuracy on downstream set ``d``, a fraction in [0, 1]
permutation        ``data.permutation`` of the run (``original`` when it has none)
<group>.<key>      config columns (below), e.g. ``train.lr``, ``data.fraction``, ``model.name``
=================  ==============================================================================

**Config columns.** One column per key of the run's config that defines the experiment: exactly what
:func:`mixer_scaling.records.identity` keeps of the record's ``config`` (paths, logging and checkpoint
cadence, W&B settings and the like are not there), flattened with dots (``train.lr``,
``train.weight_decay``, ``data.name``, ``data.fraction``, ``data.image_size``, ``model.name``,
``model.token_groups``, ``data.permutation``, ``fewshot.shots``...), and for data that is a folder of
files, as in the run id, its fingerprint (``data.fingerprint``, ``fewshot.fingerprint``) instead of its
path, so runs of one config on two different trees are two configurations, never seeds of one. Top-level keys are
``config.<key>`` (``config.device``), except ``seed``, which is the ``seed`` column. Options at their
neutral value (``data.permutation`` null, ``model.token_groups`` 1, ``data.nuisance`` 1) are not in the identity, so
their columns are empty for such runs. Lists are JSON text (``train.betas`` = ``[0.9, 0.999]``), so
every value is hashable. Each column has one type: numbers are float64, booleans ``boolean``,
anything else (or a mix) text, which parquet and CSV both keep. A record without a config (older
runs, the paper's tables) has no config columns; :func:`config_columns` lists a table's. A
*configuration* is all config columns but the seed (:mod:`mixer_scaling.analysis.aggregate`).

Accuracies are fractions everywhere (the paper's percentages are divided by 100 in
:mod:`mixer_scaling.analysis.reference`). Runs that are not ``done`` stay in the table with their
status; :func:`done_runs` is what figures use, and :class:`Summary` says how many were left out.

**Cleaning** (:func:`clean_table`, applied by :func:`collect`, by ``figures`` to a table it reads and by
:func:`mixer_scaling.analysis.figures.study`): one row per run id — a run collected twice (a backup copy
of a runs directory beside the original) is one run, never an extra seed; the row kept is the most
finished one (``done`` before ``interrupted``, ``running``, ``failed``), the first seen among equals.
An accuracy outside [0, 1] (``val_top1``, ``select_top1``, a few-shot column: a percentage written as
85.0, a sign flipped) is not a fraction: the value is dropped (made empty) and the rest of its run kept.
Each of the two says what it dropped in one warning line (:attr:`Summary.warnings`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import CorruptFile, UserError, one_line
from ..records import DONE, FAILED, INTERRUPTED, RESULT_FILE, RUNNING, STATUSES, identity, read_record
from ..columns import (
    ANALYSIS_JOB_TYPE,
    COLUMNS, COMPARE_ONLY, FEWSHOT_PREFIX, FLOAT_COLUMNS, INT_COLUMNS, SUMMARY_KEYS, TEXT_COLUMNS, fewshot_column,
    parse_fewshot_column, parse_summary_fewshot,
)

log = logging.getLogger(__name__)


# The column names live in .columns, which the W&B writer (train, tracking) shares with this reader.
#: Top-level config keys other than ``seed`` become ``config.<key>`` columns.
CONFIG_PREFIX = "config."
#: Columns :mod:`.aggregate` adds for a ``--best-over`` key (``chosen.train.lr``): not config columns.
CHOSEN_PREFIX = "chosen."
# Columns a table must have to be drawn (the reference tables and W&B tables have them too).
REQUIRED_COLUMNS = ("family", "model", "status")
# Directories never searched for records: W&B's client files, VCS and caches.
_PRUNE = {"wandb", ".git", "__pycache__", ".ipynb_checkpoints"}


# ----------------------------------------------------------------------------------------------
# Summary of what was read


@dataclass
class Summary:
    """How many records were read and in which state; ``skipped`` lists unreadable records."""

    done: int = 0
    failed: int = 0
    running: int = 0
    interrupted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    finetunes: int = 0  # fine-tune records (result.json with a parent_run_id): not pre-training results
    warnings: list[str] = field(default_factory=list)  # what cleaning dropped (clean_table), one line each

    @property
    def total(self) -> int:
        return self.done + self.failed + self.running + self.interrupted + len(self.skipped)

    def count(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)

    @property
    def line(self) -> str:
        return (f"{self.total} runs: {self.done} done, {self.failed} failed, "
                f"{self.running + self.interrupted} running/interrupted, "
                f"{len(self.skipped)} unreadable records skipped"
                + (f"; {self.finetunes} fine-tune records left out" if self.finetunes else ""))

    def __str__(self) -> str:
        return self.line

    @classmethod
    def of_table(cls, df: pd.DataFrame) -> "Summary":
        """Counts by status of a table (a table has no unreadable records)."""
        s = cls()
        for status, n in df["status"].value_counts().items():
            if status in STATUSES:
                setattr(s, status, int(n))
        return s


# ----------------------------------------------------------------------------------------------
# Rows


def fewshot_columns(df: pd.DataFrame) -> list[str]:
    """The table's few-shot columns, by data set (first seen first) then k."""
    cols = [c for c in df.columns if parse_fewshot_column(c)]
    order = {d: i for i, d in enumerate(dict.fromkeys(parse_fewshot_column(c)[0] for c in cols))}
    return sorted(cols, key=lambda c: (order[parse_fewshot_column(c)[0]], parse_fewshot_column(c)[1]))


def fewshot_datasets(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(parse_fewshot_column(c)[0] for c in fewshot_columns(df)))


def _num(value: Any) -> float:
    """A finite float, or NaN for None, strings and other non-numbers."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def examples_trained(rec: Mapping[str, Any], budget: Any = None) -> Any:
    """Examples a run trained on (whole global batches): the record's (or W&B summary's)
    ``examples_trained``; for older records ``steps`` × ``batch_size`` when both are there, else the
    configured budget (``budget``, default the record's ``examples_seen``)."""
    if rec.get("examples_trained") is not None:
        return rec["examples_trained"]
    steps, batch = _num(rec.get("steps")), _num(rec.get("batch_size"))
    if steps > 0 and batch > 0:
        return int(steps * batch)
    return rec.get("examples_seen") if budget is None else budget


def pretrain_flops(flops_per_image: Any, examples_seen: Any) -> float:
    """Total pre-training FLOPs: forward + backward ≈ 3 × forward, for every example seen."""
    return 3.0 * _num(flops_per_image) * _num(examples_seen)


def _flatten(tree: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, name + ".", out)
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value


def config_row(config: Any) -> dict[str, Any]:
    """The config columns of one run: :func:`~mixer_scaling.records.identity` of its resolved config,
    flattened with dots (top-level keys as ``config.<key>``, ``seed`` left to the seed column), lists
    as JSON text. Empty for a missing or empty config."""
    if not isinstance(config, Mapping) or not config:
        return {}
    out: dict[str, Any] = {}
    for key, value in identity(config).items():
        if key == "seed":
            continue
        if isinstance(value, Mapping):
            _flatten(value, f"{key}.", out)
        else:
            _flatten({key: value}, CONFIG_PREFIX, out)
    return out


def config_columns(df: pd.DataFrame) -> list[str]:
    """The table's config columns (dotted names; ``chosen.*`` columns are not config columns)."""
    return [c for c in df.columns if isinstance(c, str) and "." in c and not c.startswith(CHOSEN_PREFIX)]


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one (a damaged record's field of the wrong type)."""
    return value if isinstance(value, Mapping) else {}


def row_from_record(rec: Mapping[str, Any], run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """One table row from one ``result.json`` record (missing fields become NaN/None)."""
    row: dict[str, Any] = {
        "run_id": rec.get("run_id") or (Path(run_dir).name if run_dir else None),
        "family": rec.get("family"),
        "model": rec.get("model"),
        "size": rec.get("size"),
        "patch": rec.get("patch"),
        "params": rec.get("params"),
        "flops_per_image": _num(rec.get("flops_per_image")),
        "fraction": _num(rec.get("fraction")),
        "train_size": rec.get("train_size"),
        "examples_seen": rec.get("examples_seen"),
        "examples_trained": examples_trained(rec),
        "epochs": _num(rec.get("epochs")),
        "seed": rec.get("seed"),
        "device_hours": _num(rec.get("device_hours")),
        "throughput": _num(rec.get("throughput")),
        "status": rec.get("status"),
        "study": rec.get("study"),
        "run_dir": str(run_dir) if run_dir is not None else rec.get("run_dir"),
        # data.permutation of the run (paper Fig. 4); runs without one saw the original images
        "permutation": _mapping(_mapping(rec.get("config")).get("data")).get("permutation") or "original",
    }
    row["pretrain_flops"] = pretrain_flops(row["flops_per_image"], row["examples_trained"])
    if math.isnan(row["epochs"]) and _num(row["train_size"]) > 0:
        row["epochs"] = _num(row["examples_trained"]) / _num(row["train_size"])
    metrics = _mapping(rec.get("metrics"))
    row["val_top1"] = _num(metrics.get("val_top1"))
    row["select_top1"] = _num(metrics.get("select_top1"))
    row["best_step"] = rec.get("best_step")
    row["precision"] = rec.get("precision")
    for dataset, per_k in _mapping(metrics.get("fewshot")).items():
        for k, acc in _mapping(per_k).items():
            if str(k).isdigit():
                row[fewshot_column(dataset, k)] = _num(acc)
    row.update(config_row(rec.get("config")))
    for group, fp in _mapping(rec.get("data_fingerprint")).items():
        # The data itself is part of the configuration: runs of one config on two trees are not seeds.
        if isinstance(fp, Mapping) and fp.get("digest"):
            row[f"{group}.fingerprint"] = str(fp["digest"])
    return row


def to_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows → a table with the schema's columns, order and dtypes (few-shot columns last)."""
    df = pd.DataFrame.from_records(list(rows))
    return conform(df)


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Add missing schema columns, order them, and coerce dtypes (e.g. after reading a CSV)."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in TEXT_COLUMNS:
        df[col] = df[col].astype("string")
    fs = fewshot_columns(df)
    for col in fs:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    config = sorted(config_columns(df))
    for col in config:
        df[col] = _config_dtype(df[col])
    extra = [c for c in df.columns if c not in COLUMNS and c not in fs and c not in config]
    return df[COLUMNS + fs + extra + config].reset_index(drop=True)


def _config_text(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return pd.NA
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _config_dtype(col: pd.Series) -> pd.Series:
    """One type per config column, the same whether it came from records, parquet or CSV: numbers →
    float64, booleans → ``boolean``, anything else (or a mix of kinds) → text."""
    kind = pd.api.types.infer_dtype(col, skipna=True)
    if kind in ("empty", "integer", "floating", "mixed-integer-float", "decimal"):
        return pd.to_numeric(col, errors="coerce").astype("float64")
    if kind == "boolean":
        return col.astype("boolean")
    return col.map(_config_text, na_action="ignore").astype("string")


# ----------------------------------------------------------------------------------------------
# Collect from run directories


def find_records(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Every ``result.json`` under the given roots (a root may also be a run dir or the file itself).

    A directory holding a ``result.json`` is a run directory: its subdirectories are not searched.
    Raises :class:`UserError` for a root that does not exist.
    """
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root)
        try:
            exists = root.exists()
        except OSError as exc:  # a name over 255 bytes, a folder on the way that cannot be entered
            shown = str(root) if len(str(root)) <= 120 else f"{str(root)[:60]}…{str(root)[-30:]}"
            raise UserError(f"runs directory {shown} cannot be read ({exc.strerror or exc}); expected a folder of "
                            f"run directories (<runs_dir>/<run_id>/{RESULT_FILE})") from None
        if not exists:
            raise UserError(f"runs directory {root} does not exist; expected a folder of run directories "
                            f"(<runs_dir>/<run_id>/{RESULT_FILE})")
        if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
            raise UserError(f"runs directory {root} cannot be read (permission denied); expected a folder of "
                            f"run directories this user can read")
        if root.is_file():
            if root.name != RESULT_FILE:
                raise UserError(f"{root} is a file, not a runs directory or a {RESULT_FILE}")
            found[root.resolve()] = None
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            if RESULT_FILE in filenames:
                found[Path(dirpath, RESULT_FILE).resolve()] = None
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE and not d.startswith("."))
    return list(found)


#: Fields a record needs to become a row (the columns a figure cannot do without).
REQUIRED_FIELDS = ("status", "model", "family")


def _load(path: Path) -> tuple[dict | None, str]:
    """A record, or (None, what is wrong with it): unreadable, not JSON (a truncated or half-written file),
    not a JSON object, an unknown status or missing fields. Never raises for a bad file."""
    try:
        rec = read_record(path.parent)
    except CorruptFile as exc:
        return None, exc.problem
    if rec is None:
        return None, "unreadable (it vanished while being read)"
    missing = [k for k in REQUIRED_FIELDS if rec.get(k) in (None, "")]
    if missing:
        return None, f"missing required field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if rec.get("status") not in STATUSES:
        return None, f"status {rec.get('status')!r} is not one of {', '.join(STATUSES)}"
    return rec, ""


def collect(roots: str | os.PathLike | Iterable[str | os.PathLike], *,
            warn: bool = True) -> tuple[pd.DataFrame, Summary]:
    """Read every ``result.json`` under ``roots`` into one table, and count what was read.

    Every readable record becomes a row, whatever its status; a record that cannot be used (unreadable,
    truncated or half-written JSON, not an object, no known status, no model, a ``metrics``/``config``/
    ``error`` field that is not an object: :func:`~mixer_scaling.records.record_problem`) is skipped, listed in
    ``Summary.skipped`` with what is wrong and (``warn``) logged as a warning. The table is then
    cleaned (:func:`clean_table`: one row per run id, accuracies outside [0, 1] dropped), its warnings
    in ``Summary.warnings`` (and logged with ``warn``). Raises :class:`UserError` when a root is missing,
    is not readable, or no usable record is found at all.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = list(roots)
    if not roots:
        raise UserError("no runs directory given")
    paths = find_records(roots)
    where = ", ".join(str(r) for r in roots)
    if not paths:
        raise UserError(f"no {RESULT_FILE} found under {where}; expected <runs_dir>/<run_id>/{RESULT_FILE}")
    summary, rows = Summary(), []
    for path in paths:
        rec, why = _load(path)
        if rec is None:
            summary.skipped.append((str(path), why))
            if warn:
                log.warning("skipped %s: %s", path, why)
            continue
        if rec.get("parent_run_id"):  # a fine-tune: its metrics are downstream, not pre-training results
            summary.finetunes += 1
            continue
        summary.count(rec["status"])
        rows.append(row_from_record(rec, path.parent))
    if not rows:
        first = f"; first: {summary.skipped[0][0]}: {summary.skipped[0][1]}" if summary.skipped else ""
        raise UserError(f"no pre-training records under {where} ({summary.finetunes} fine-tune records, "
                        f"{len(summary.skipped)} unreadable{first})")
    df, summary.warnings = clean_table(to_frame(rows))
    if warn:
        for line in summary.warnings:
            log.warning("%s", line)
    if len(df) < len(rows):  # duplicates of one run: count each run once
        summary.done, summary.failed, summary.running, summary.interrupted = 0, 0, 0, 0
        for status in df["status"].dropna():
            summary.count(status)
    return df.sort_values(["family", "model", "fraction", "seed", "run_id"], na_position="last",
                          kind="stable").reset_index(drop=True), summary


#: A fine-tune's own config columns are ``finetune.<key>`` (``finetune.train.lr``, ``finetune.image_size``).
FINETUNE_PREFIX = "finetune."
#: Columns a fine-tune row takes from its own record; everything else is its parent's.
_FINETUNE_OWN = ("run_id", "status", "run_dir", "val_top1", "select_top1", "best_step", "throughput", "precision")


def finetune_row(rec: Mapping[str, Any], run_dir: str | os.PathLike, parent: Mapping[str, Any],
                 parent_dir: str | os.PathLike) -> dict[str, Any]:
    """One row of the fine-tuned table: the parent's row (family, model, fraction, seed, ``pretrain_flops``
    and its config columns: what the fine-tune is placed at, as in the paper's Fig. 2 left), with the
    fine-tune's own run id, status, downstream ``val_top1``/``select_top1`` (report and selection halves of
    the downstream validation split) and throughput, its config as ``finetune.*`` columns (less ``parent``
    and the model, which are the parent's) and ``parent_run_id``/``parent_run_dir``."""
    row = {k: v for k, v in row_from_record(parent, parent_dir).items() if not k.startswith(FEWSHOT_PREFIX)}
    own = row_from_record(rec, run_dir)
    for key in _FINETUNE_OWN:
        row[key] = own.get(key)
    row["parent_run_id"] = str(rec.get("parent_run_id"))
    row["parent_run_dir"] = str(parent_dir)
    flat: dict[str, Any] = {}
    _flatten(identity(_mapping(rec.get("config"))), "", flat)
    for key, value in flat.items():
        if key == "parent" or key.startswith("model."):
            continue
        row[FINETUNE_PREFIX + key] = _config_text(value) if isinstance(value, (list, tuple, dict)) else value
    return row


def collect_finetunes(roots: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The fine-tunes under ``roots``, each joined to its parent (:func:`finetune_row`): the parent's record
    is read from ``parent_run_dir``, else found under ``roots`` by run id. A fine-tune whose parent is in
    neither place, or whose record is unusable, is left out. An empty table when there are none."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    loaded = [(path, _load(path)[0]) for path in find_records(list(roots))]
    by_id = {str(rec.get("run_id") or path.parent.name): (path.parent, rec) for path, rec in loaded
             if rec is not None and not rec.get("parent_run_id")}
    rows = []
    for path, rec in loaded:
        if rec is None or not rec.get("parent_run_id"):
            continue
        parent_id = str(rec["parent_run_id"])
        found = by_id.get(parent_id)
        if found is None and rec.get("parent_run_dir"):
            parent_dir = Path(str(rec["parent_run_dir"]))
            parent = _load(parent_dir / RESULT_FILE)[0] if (parent_dir / RESULT_FILE).exists() else None
            found = (parent_dir, parent) if parent is not None else None
        if found is None:
            log.warning("fine-tune %s: its parent %s is not under %s nor at its parent_run_dir; left out",
                        path.parent, parent_id, ", ".join(map(str, roots)))
            continue
        rows.append(finetune_row(rec, path.parent, found[1], found[0]))
    if not rows:
        return pd.DataFrame()
    df = clean_table(to_frame(rows))[0]
    return df.sort_values(["family", "model", "fraction", "seed", "parent_run_id", "run_id"], na_position="last",
                          kind="stable").reset_index(drop=True)


#: Status order when one run id has several rows: the most finished row is kept.
_STATUS_RANK = {DONE: 0, INTERRUPTED: 1, RUNNING: 2, FAILED: 3}
ACCURACY_COLUMNS = ("val_top1", "select_top1", "real_top1", "avg5", "vtab1k")


def accuracy_columns(df: pd.DataFrame) -> list[str]:
    """The table's accuracy columns (fractions in [0, 1]): val/select top-1 and the few-shot columns."""
    return [c for c in ACCURACY_COLUMNS if c in df.columns] + fewshot_columns(df)


def clean_table(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per run id, and no accuracy outside [0, 1]; returns the cleaned table and one warning
    line per kind of thing dropped (none when the table was clean).

    * Rows sharing a run id (a runs directory and its backup copy collected together, or one table
      concatenated twice) are one run: the most finished row is kept (``done``, then ``interrupted``,
      ``running``, ``failed``; the first seen among equals). Rows without a run id are all kept.
    * An accuracy value outside [0, 1] is dropped (made empty): the table holds fractions, so 85.0 (a
      percentage) or -0.2 cannot be one. The run's other values are kept.
    """
    warnings: list[str] = []
    if "run_id" in df.columns and df["run_id"].notna().any():
        ids = df["run_id"]
        dup = ids.notna() & ids.duplicated(keep=False)
        if dup.any():
            df = df.reset_index(drop=True)
            ids = df["run_id"]
            rank = (df["status"].map(_STATUS_RANK).astype("float64").fillna(len(_STATUS_RANK)).to_numpy()
                    if "status" in df.columns else np.zeros(len(df)))
            order = np.lexsort((np.arange(len(df)), rank))  # most finished first, then first seen
            ordered = ids.iloc[order]
            extra = order[(ordered.notna() & ordered.duplicated(keep="first")).to_numpy()]
            n_ids = int(ids[ids.notna() & ids.duplicated(keep=False)].nunique())
            df = df.drop(index=extra)
            drop = extra
            warnings.append(f"dropped {len(drop)} duplicate row{'s' if len(drop) != 1 else ''} of "
                            f"{n_ids} run id{'s' if n_ids != 1 else ''} seen more than once (a runs directory "
                            f"collected twice, e.g. with a backup copy?): each run counts once, never as an "
                            f"extra seed")
    bad: dict[str, int] = {}
    cols = accuracy_columns(df)
    if cols:
        df = df.copy()
        for col in cols:
            values = pd.to_numeric(df[col], errors="coerce")
            outside = values.notna() & ~values.between(0.0, 1.0)
            if outside.any():
                bad[col] = int(outside.sum())
                df[col] = values.mask(outside).astype("float64")
    if bad:
        n = sum(bad.values())
        warnings.append(f"dropped {n} accurac{'ies' if n != 1 else 'y'} outside [0, 1] ("
                        + ", ".join(f"{c}: {k}" for c, k in bad.items())
                        + "): accuracies are fractions, so these are not (a percentage?); their runs are kept")
    return df.reset_index(drop=True), warnings


def done_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The rows figures are drawn from: finished runs."""
    return df[df["status"] == DONE]


# ----------------------------------------------------------------------------------------------
# Files


TABLE_FORMATS = {".parquet": "parquet", ".csv": "CSV"}


def write_table(df: pd.DataFrame, path: str | os.PathLike, csv: str | os.PathLike | None = None) -> list[Path]:
    """Write the table to ``path`` in the format its name says (``.parquet`` or ``.csv``; another ending
    is a :class:`UserError`), and as CSV to ``csv`` too when given; returns the paths written.

    Each file is written to a temp name and renamed, so a reader never sees half a table.
    """
    writers = {".parquet": lambda p: df.to_parquet(p, index=False), ".csv": lambda p: df.to_csv(p, index=False)}
    targets = [(path, Path(path).suffix.lower())] + ([(csv, ".csv")] if csv is not None else [])
    for target, kind in targets:
        if kind not in writers:
            raise UserError(f"{target}: a table is written as .parquet or .csv, chosen by the file name's ending; "
                            f"allowed: a name ending in .parquet or .csv")
    written = []
    for target, kind in targets:
        writer = writers[kind]
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            writer(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target)
    return written


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A results table from parquet or CSV, checked for the columns figures need."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"results table {path} does not exist")
    kind = "CSV" if path.suffix.lower() == ".csv" else "parquet"
    expected = "expected a .parquet or .csv table written by `mixer-scaling collect`"
    try:
        df = pd.read_csv(path) if kind == "CSV" else pd.read_parquet(path)
    except Exception as exc:  # pyarrow and the CSV parser raise many types
        raise UserError(f"cannot read results table {path} as {kind} ({one_line(exc)}); {expected}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"results table {path} is missing columns: {', '.join(missing)}; {expected} "
                        f"(it needs {', '.join(REQUIRED_COLUMNS)})")
    return conform(df)


# ----------------------------------------------------------------------------------------------
# W&B


def _get(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``, or a flat ``tree["a.b"]`` (W&B keeps both styles)."""
    if dotted in tree:
        return tree[dotted]
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    if isinstance(node, Mapping) and "value" in node and len(node) <= 2:  # raw W&B config entries
        return node["value"]
    return node


_WANDB_STATES = {"finished": DONE, "running": RUNNING, "pending": RUNNING, "crashed": FAILED,
                 "failed": FAILED, "killed": INTERRUPTED, "preempting": INTERRUPTED, "preempted": INTERRUPTED}


def _model_meta(name: str | None) -> dict[str, Any]:
    """family, size, patch of a registry name ``<family>/<size>``.

    Read from the name when it says all (``mixer/b16`` → patch 16, ``bit/r50x1`` → no patch, a timm
    family's ``deit/deit_tiny_patch16_224`` → patch 16, ``convnext/convnext_atto`` → none); otherwise
    (``mixer/tiny``) from the model registry, which imports torch.
    """
    if not name:
        return {}
    family, _, size = str(name).partition("/")
    m = re.search(r"(\d+)$", size)
    if family == "bit" or (family in ("mixer", "vit") and m):
        return {"family": family, "size": size, "patch": int(m.group(1)) if family != "bit" else None}
    if size and family not in ("mixer", "vit") and re.fullmatch(r"[a-z][a-z0-9_]*", family):
        patch = re.search(r"patch(\d+)", size)  # timm's names say their patch size
        return {"family": family, "size": size, "patch": int(patch.group(1)) if patch else None}
    try:
        from ..models.registry import get_spec

        spec = get_spec(name)
        return {"family": spec.family, "size": spec.size, "patch": spec.patch}
    except Exception:  # not a registry name, or the models cannot be imported here
        return {"family": family, "size": size or None, "patch": None}


def _flops_of(name: str | None, image_size: Any, num_classes: Any) -> float:
    """Forward FLOPs from the model registry (W&B summaries of older runs do not carry them)."""
    if not name:
        return math.nan
    try:
        from ..models.flops import forward_flops

        kwargs = {"num_classes": int(num_classes)} if _num(num_classes) > 0 else {}
        size = int(image_size) if _num(image_size) > 0 else None
        return float(forward_flops(name, size, **kwargs))
    except Exception:
        return math.nan


def _plain_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A W&B run config as the nested resolved config: raw ``{"value": ...}`` entries unwrapped,
    dotted keys nested, W&B's own ``_``-prefixed entries left out."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, Mapping) and "value" in value and set(value) <= {"value", "desc"}:
            value = value["value"]
        if isinstance(value, Mapping):
            value = _plain_config(value)
        node = out
        *parents, leaf = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def row_from_wandb(run: Any) -> dict[str, Any]:
    """One table row from a ``wandb.apis.public.Run``: its config (the resolved run config) and summary.

    Summary keys are :data:`.columns.SUMMARY_KEYS` (what :func:`.columns.wandb_summary` writes) and
    ``fewshot/<dataset>/<k>shot``. Fields the summary holds win over values derived from the config;
    forward FLOPs are recomputed from the model registry when the summary lacks them. The config
    columns come from the run's config as from a record's (:func:`config_row`), without the flat
    comparison keys (:data:`.columns.COMPARE_ONLY`), which are not config keys. ``run_id``, ``study``
    and ``run_dir`` are the W&B run's id, group and URL.
    """
    cfg = dict(run.config or {})
    summary = dict(getattr(run, "summary_metrics", None) or {})

    def key(column: str, default: Any = None) -> Any:
        return summary.get(SUMMARY_KEYS[column], default)

    name = key("model") or _get(cfg, "model.name")
    meta = _model_meta(name)
    examples = key("examples_seen", _get(cfg, "train.examples_seen"))
    trained = examples_trained(summary, budget=examples)
    train_size = key("train_size")
    image_size = summary.get("image_size", _get(cfg, "data.image_size", _get(cfg, "model.image_size")))
    flops = _num(key("flops_per_image"))
    if math.isnan(flops):
        flops = _flops_of(name, image_size, summary.get("num_classes", _get(cfg, "data.num_classes")))
    status = key("status") if key("status") in STATUSES else \
        _WANDB_STATES.get(str(getattr(run, "state", "")), FAILED)
    row = {
        "run_id": getattr(run, "id", None),
        "family": key("family", meta.get("family")),
        "model": name,
        "size": key("size", meta.get("size")),
        "patch": key("patch", meta.get("patch")),
        "params": key("params"),
        "flops_per_image": flops,
        "fraction": _num(key("fraction", _get(cfg, "data.fraction"))),
        "train_size": train_size,
        "examples_seen": examples,
        "examples_trained": trained,
        "epochs": _num(key("epochs")),
        "seed": key("seed", _get(cfg, "seed")),
        "pretrain_flops": _num(key("pretrain_flops")) if _num(key("pretrain_flops")) > 0 else
        pretrain_flops(flops, trained),
        "device_hours": _num(key("device_hours")),
        "throughput": _num(key("throughput")),
        "val_top1": _num(key("val_top1")),
        "select_top1": _num(key("select_top1", summary.get("metrics/select_top1"))),
        "best_step": key("best_step"),
        "precision": key("precision"),
        "status": status,
        "study": getattr(run, "group", None) or _get(cfg, "study"),
        "run_dir": getattr(run, "url", None),
        "permutation": _get(cfg, "data.permutation") or "original",
    }
    if math.isnan(row["epochs"]) and _num(train_size) > 0:
        row["epochs"] = _num(trained) / _num(train_size)
    for k, value in summary.items():
        shot = parse_summary_fewshot(k)
        if shot:
            row[fewshot_column(*shot)] = _num(value)
    plain = {k: v for k, v in _plain_config(cfg).items() if k not in COMPARE_ONLY}
    row.update(config_row(plain))
    return row


def _is_rate_limit(exc: BaseException) -> bool:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = str(exc).lower()
    return status == 429 or "429" in text or "rate limit" in text or "too many requests" in text


def collect_wandb(entity_project: str, group: str | None = None, *, api: Any = None, per_page: int = 500,
                  max_retries: int = 6, backoff_s: float = 2.0,
                  sleep: Callable[[float], None] = time.sleep) -> pd.DataFrame:
    """The results table from a W&B project's run configs and summaries (no history is downloaded).

    Runs are paged ``per_page`` at a time with their config and summary in the page query. On a
    rate limit (HTTP 429) the listing waits (exponential backoff with jitter, up to
    ``max_retries`` times) and starts again, skipping runs it already has. A path that is not
    ``ENTITY/PROJECT``, a project that does not exist or cannot be reached, or one with no runs
    (in ``group``) raises :class:`UserError` with one line. ``api`` defaults to ``wandb.Api()``.
    """
    parts = str(entity_project).strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--wandb {entity_project!r} is not ENTITY/PROJECT")
    where = f"W&B project {entity_project}" + (f" (group {group})" if group else "")
    rows: dict[str, dict] = {}
    for attempt in range(max_retries + 1):
        try:
            if api is None:
                import wandb

                api = wandb.Api(timeout=30)
            for run in _list_runs(api, entity_project, group, per_page):
                if run.id not in rows:
                    rows[run.id] = row_from_wandb(run)
            break
        except UserError:
            raise
        except Exception as exc:
            if not _is_rate_limit(exc) or attempt == max_retries:
                raise UserError(f"cannot read {where}: {one_line(exc)}") from None
            wait = backoff_s * 2 ** attempt * (1 + random.random() / 4)
            log.warning("W&B rate limit (%s); retrying in %.0f s", one_line(exc), wait)
            sleep(wait)
    if not rows:
        raise UserError(f"{where} has no runs")
    df = to_frame(list(rows.values()))
    return df.sort_values(["family", "model", "fraction", "seed", "run_id"], na_position="last",
                          kind="stable").reset_index(drop=True)


def _list_runs(api: Any, path: str, group: str | None, per_page: int) -> Iterator[Any]:
    filters = {"group": group} if group else None
    try:
        runs = api.runs(path, filters=filters, per_page=per_page, lazy=False)
    except TypeError:  # wandb < 0.21 has no `lazy` (and loads config and summary anyway)
        runs = api.runs(path, filters=filters, per_page=per_page)
    # the run `figures --wandb` logs a study's table and figures to is not a training run
    yield from (run for run in runs if getattr(run, "job_type", None) != ANALYSIS_JOB_TYPE)


# ----------------------------------------------------------------------------------------------
# Synthetic records (tests, benchmarks, the notebook's demo table)

# name, family, size, patch, params, forward FLOPs/image at 224, and the data-scaling curve
# err = d·fraction^(−b) + c: Mixer starts lower and gains more from data than ViT and BiT (paper §3.3)
SYNTHETIC_MODELS = (
    ("mixer/b32", "mixer", "b32", 32, 60_293_428, 8.9e9, 0.12, 0.38, 0.14),
    ("mixer/l32", "mixer", "l32", 32, 206_000_000, 3.1e10, 0.11, 0.40, 0.10),
    ("mixer/l16", "mixer", "l16", 16, 208_196_168, 1.2e11, 0.10, 0.42, 0.07),
    ("vit/b32", "vit", "b32", 32, 88_000_000, 8.7e9, 0.13, 0.26, 0.16),
    ("vit/l32", "vit", "l32", 32, 306_000_000, 3.1e10, 0.12, 0.28, 0.12),
    ("vit/l16", "vit", "l16", 16, 304_000_000, 1.2e11, 0.11, 0.30, 0.09),
    ("bit/r152x2", "bit", "r152x2", None, 236_000_000, 9.2e10, 0.12, 0.22, 0.12),
)
SYNTHETIC_FRACTIONS = (0.03, 0.1, 0.3, 1.0)


def synthetic_records(n: int, *, seed: int = 0, full_size: int = 1_000_000, examples_seen: int = 7_000_000,
                      statuses: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """``n`` plausible records in the ``result.json`` schema, for tests, benchmarks and demos.

    Runs cycle through :data:`SYNTHETIC_MODELS` × :data:`SYNTHETIC_FRACTIONS` × seeds; accuracy
    follows ``1 − (d·fraction^(−b) + c)`` per model with small noise, so fits have something to find.
    ``statuses`` gives the share of each non-done status (e.g. ``{"failed": 0.05}``); such runs have
    no metrics, as real ones would not. Each record's ``config`` holds ``model.name``,
    ``data.fraction``, ``train.lr`` and ``seed``; ``metrics.select_top1`` is the accuracy with its own
    noise (a second stream, so the other values do not depend on it).
    """
    rng = random.Random(seed)
    select_rng = random.Random(f"select-{seed}")
    cells = [(m, f) for m in SYNTHETIC_MODELS for f in SYNTHETIC_FRACTIONS]
    out = []
    for i in range(n):
        (name, family, size, patch, params, flops, d, b, c), fraction = cells[i % len(cells)]
        run_seed = i // len(cells)
        train_size = int(full_size * fraction)
        err = d * fraction ** (-b) + c
        acc = min(max(1.0 - err * math.exp(rng.gauss(0.0, 0.02)), 0.0), 1.0)
        r = rng.random()
        status, cum = DONE, 0.0
        for st, share in (statuses or {}).items():
            cum += share
            if r < cum:
                status = st
                break
        run_id = f"{i:06d}{rng.getrandbits(16):04x}"
        rec: dict[str, Any] = {
            "run_id": run_id, "run_dir": f"runs/{run_id}", "study": "synthetic", "status": status,
            "config": {"model": {"name": name}, "data": {"fraction": fraction}, "train": {"lr": 1e-3},
                       "seed": run_seed},
            "model": name, "family": family, "size": size, "patch": patch, "image_size": 224,
            "params": params, "params_backbone": params - 769_000, "flops_per_image": flops,
            "dataset": "synthetic", "num_classes": 1000, "fraction": fraction, "train_size": train_size,
            "full_size": full_size, "examples_seen": examples_seen, "batch_size": 4096,
            "steps": -(-examples_seen // 4096), "epochs": examples_seen / train_size, "seed": run_seed,
            "train_seconds": 3.6e-12 * flops * examples_seen * rng.uniform(0.9, 1.1),
            "throughput": 2.0e13 / flops * rng.uniform(0.95, 1.05), "device": "synthetic", "num_devices": 1,
            "metrics": {}, "attempts": 1,
        }
        rec["device_hours"] = rec["train_seconds"] / 3600.0
        if status == DONE:
            rec["metrics"] = {
                "val_top1": acc,
                "select_top1": min(max(acc + select_rng.gauss(0.0, 0.005), 0.0), 1.0),
                "fewshot": {
                    ds: {str(k): min(max(acc * scale * (1 - 0.5 / k) + rng.gauss(0, 0.01), 0.0), 1.0)
                         for k in (1, 5, 10, 25)}
                    for ds, scale in (("digits", 1.05), ("synthetic_heldout", 0.85))
                },
            }
        elif status == FAILED:
            rec["error"] = {"type": "RuntimeError", "message": "synthetic failure", "traceback": ""}
        out.append(rec)
    return out


def write_records(records: Iterable[Mapping[str, Any]], runs_dir: str | os.PathLike) -> Path:
    """Write each record to ``<runs_dir>/<run_id>/result.json`` (tests and benchmarks)."""
    runs_dir = Path(runs_dir)
    for rec in records:
        run_dir = runs_dir / str(rec["run_id"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULT_FILE).write_text(json.dumps({**rec, "run_dir": str(run_dir)}))
    return runs_dir


__all__ = [
    "CHOSEN_PREFIX", "COLUMNS", "CONFIG_PREFIX", "FEWSHOT_PREFIX", "REQUIRED_COLUMNS", "Summary", "collect",
    "clean_table", "collect_wandb", "config_columns", "config_row", "conform", "done_runs", "fewshot_column", "fewshot_columns",
    "fewshot_datasets", "find_records", "parse_fewshot_column", "pretrain_flops", "read_table", "row_from_record",
    "row_from_wandb", "synthetic_records", "to_frame", "write_records", "write_table",
]
