"""The names a run's W&B data and the results table share, in one place.

The writer (:mod:`mixer_scaling.train`, :mod:`mixer_scaling.tracking`) and the readers
(:func:`mixer_scaling.analysis.results.row_from_record`, :func:`~mixer_scaling.analysis.results.row_from_wandb`)
all take their names from here, so a key renamed on one side cannot silently go missing on the other.
This module imports nothing heavy (no pandas, no torch, no wandb): the training process imports it.

Four groups of names:

* **Results-table columns** (:data:`COLUMNS` and their types). Their meaning is documented in
  :mod:`.results`, which owns the table.
* **W&B comparison config** (:data:`COMPARE_CONFIG`): flat top-level config keys set at ``wandb.init``
  beside the nested resolved config, so W&B's filter, group-by and scatter panels use them directly.
  They are the record's static fields; ``pretrain_flops`` is the record's ``train_flops`` (the table's
  name for it) and the model's name is ``model_name``, because the config's top-level ``model`` is the
  model group (``model.name``, ``model.patch`` ...), which a flat ``model`` would overwrite.
* **W&B summary** (:func:`wandb_summary`, :data:`SUMMARY_KEYS`): the record's scalars plus its metrics,
  under the names :func:`~.results.row_from_wandb` reads back into table columns.
* **W&B history** (:func:`history_row`, :data:`METRIC_SUMMARIES`): the ``metrics.jsonl`` rows (the same
  keys: ``examples``, ``train/loss`` ...) plus ``flops``, the pre-training FLOPs done so far, so a
  curve can be drawn against examples seen (the default x-axis) or against compute.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

# ----------------------------------------------------------------------------------------------
# Results-table columns

COLUMNS = [
    "run_id", "family", "model", "size", "patch", "params", "flops_per_image", "fraction", "train_size",
    "examples_seen", "examples_trained", "epochs", "seed", "pretrain_flops", "device_hours", "throughput", "val_top1",
    "select_top1", "best_step", "precision", "status", "study", "run_dir",
]
TEXT_COLUMNS = ("run_id", "family", "model", "size", "precision", "status", "study", "run_dir")
INT_COLUMNS = ("patch", "params", "train_size", "examples_seen", "examples_trained", "seed", "best_step")
FLOAT_COLUMNS = ("flops_per_image", "fraction", "epochs", "pretrain_flops", "device_hours", "throughput",
                 "val_top1", "select_top1")
FEWSHOT_PREFIX = "fewshot_"
_FEWSHOT_COLUMN = re.compile(r"^fewshot_(?P<dataset>.+)_(?P<k>\d+)$")


def fewshot_column(dataset: str, k: int | str) -> str:
    """The table column of k-shot accuracy on ``dataset``: ``fewshot_<dataset>_<k>``."""
    return f"{FEWSHOT_PREFIX}{dataset}_{int(k)}"


def parse_fewshot_column(name: str) -> tuple[str, int] | None:
    """``fewshot_synthetic_heldout_5`` → ``("synthetic_heldout", 5)``; None for other columns."""
    m = _FEWSHOT_COLUMN.match(name)
    return (m["dataset"], int(m["k"])) if m else None


# ----------------------------------------------------------------------------------------------
# W&B config: flat comparison keys

#: W&B config key → record field (:func:`mixer_scaling.train.describe`). Set at ``wandb.init``.
COMPARE_CONFIG = {
    "family": "family",
    "model_name": "model",
    "size": "size",
    "patch": "patch",
    "fraction": "fraction",
    "train_size": "train_size",
    "examples_seen": "examples_seen",
    "params": "params",
    "flops_per_image": "flops_per_image",
    "pretrain_flops": "train_flops",
    "seed": "seed",
    "study": "study",
}
#: Comparison keys that are not keys of the resolved config: a reader of a W&B config drops them before
#: taking its config columns (``seed`` and ``study`` are real config keys, with the same values).
COMPARE_ONLY = tuple(k for k in COMPARE_CONFIG if k not in ("seed", "study"))


def compare_config(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The flat comparison keys of a record's static fields (missing fields are left out)."""
    return {key: fields[field] for key, field in COMPARE_CONFIG.items() if fields.get(field) is not None}


# ----------------------------------------------------------------------------------------------
# W&B summary

#: Table column → the W&B summary key it is read from, for the columns a summary carries under a
#: name of its own or its record name. ``run_id``, ``study`` and ``run_dir`` come from the W&B run
#: itself (id, group, URL); few-shot columns from :func:`summary_fewshot_key`.
SUMMARY_KEYS = {c: c for c in COLUMNS if c not in ("run_id", "run_dir", "pretrain_flops")}
SUMMARY_KEYS["pretrain_flops"] = "train_flops"
#: Record metrics copied to the summary under their own names (``metrics.val_top1`` → ``val_top1``).
SUMMARY_METRICS = ("val_top1", "select_top1")
#: Record fields never put in the summary: where it lay on the machine that trained it.
SUMMARY_LEFT_OUT = ("run_dir",)
_SUMMARY_FEWSHOT = re.compile(r"^fewshot/(?P<dataset>.+)/(?P<k>\d+)shot$")


def summary_fewshot_key(dataset: str, k: int | str) -> str:
    """The summary key of k-shot accuracy on ``dataset``: ``fewshot/<dataset>/<k>shot``."""
    return f"fewshot/{dataset}/{int(k)}shot"


def parse_summary_fewshot(key: str) -> tuple[str, int] | None:
    """``fewshot/digits/5shot`` → ``("digits", 5)``; None for other keys."""
    m = _SUMMARY_FEWSHOT.match(str(key))
    return (m["dataset"], int(m["k"])) if m else None


def wandb_summary(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A finished record → its W&B summary: every scalar field (numbers, text, booleans) but
    :data:`SUMMARY_LEFT_OUT`, the :data:`SUMMARY_METRICS` and one key per few-shot set and k, so a W&B
    project alone rebuilds the results table (:func:`~.results.row_from_wandb`)."""
    out = {k: v for k, v in fields.items() if isinstance(v, (int, float, str)) and k not in SUMMARY_LEFT_OUT}
    metrics = fields.get("metrics") or {}
    for name in SUMMARY_METRICS:
        out[name] = metrics.get(name)
    for dataset, per_k in (metrics.get("fewshot") or {}).items():
        for k, acc in per_k.items():
            out[summary_fewshot_key(dataset, k)] = acc
    return out


# ----------------------------------------------------------------------------------------------
# W&B history

EXAMPLES = "examples"  # examples trained so far: the x-axis of every curve (a metrics.jsonl key)
FLOPS = "flops"  # pre-training FLOPs so far (3 × forward FLOPs per image × examples): the other x-axis
STEP = "step"  # metrics.jsonl's optimizer step: W&B's own step, not a logged value
#: Metric (or glob) → how W&B's summary keeps it: accuracies their best, losses and rates their last.
METRIC_SUMMARIES = {
    "val/select_top1": "max",
    "train/loss": "last",
    "train/lr": "last",
    "train/grad_norm": "last",
    "train/img_per_s": "last",
    "epoch": "last",
}
#: Globs whose metrics are drawn against :data:`EXAMPLES` (any metric logged later under them too).
STEPPED_GLOBS = ("train/*", "val/*")


def history_row(row: Mapping[str, Any], flops_per_image: float | None) -> dict[str, Any]:
    """A ``metrics.jsonl`` row → the W&B history row: the same keys but ``step`` (W&B's step), plus
    :data:`FLOPS` when the forward FLOPs per image are known."""
    out = {k: v for k, v in row.items() if k != STEP}
    if flops_per_image and EXAMPLES in row:
        out[FLOPS] = 3.0 * float(flops_per_image) * float(row[EXAMPLES])
    return out


def define_metrics(run) -> None:
    """Declare the history's axes and summaries on a live W&B run (``wandb.Run.define_metric``):
    :data:`EXAMPLES` and :data:`FLOPS` are axes (FLOPs selectable as x in any panel), every
    :data:`STEPPED_GLOBS` metric is drawn against examples, and :data:`METRIC_SUMMARIES` say which
    value the summary keeps."""
    run.define_metric(EXAMPLES, hidden=False)
    run.define_metric(FLOPS, hidden=False)
    for glob in STEPPED_GLOBS:
        run.define_metric(glob, step_metric=EXAMPLES)
    for name, summary in METRIC_SUMMARIES.items():
        run.define_metric(name, step_metric=EXAMPLES, summary=summary)


__all__ = [
    "COLUMNS", "COMPARE_CONFIG", "COMPARE_ONLY", "EXAMPLES", "FEWSHOT_PREFIX", "FLOAT_COLUMNS", "FLOPS", "INT_COLUMNS",
    "METRIC_SUMMARIES", "STEPPED_GLOBS", "SUMMARY_KEYS", "SUMMARY_LEFT_OUT", "SUMMARY_METRICS", "TEXT_COLUMNS",
    "compare_config", "define_metrics", "fewshot_column", "history_row", "parse_fewshot_column",
    "parse_summary_fewshot", "summary_fewshot_key", "wandb_summary",
]


#: The W&B job type of the run ``figures --wandb`` logs a study's table and figures to: not a training
#: run, so ``collect --wandb`` leaves it out.
ANALYSIS_JOB_TYPE = "analysis"
