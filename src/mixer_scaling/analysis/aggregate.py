"""One point per configuration: seeds are averaged (with a Student-t interval), nothing else is.

A *configuration* is what a run's config says apart from its seed: the table's config columns
(:func:`~.results.config_columns`: ``train.lr``, ``data.fraction``, ``model.name``, ...) together
with ``family``, ``model``, ``label`` (the paper's tables), ``size``, ``fraction``, ``train_size``,
``examples_seen``, ``flops_per_image`` and ``pretrain_flops``. Runs that differ in any of them are
never averaged together: two learning rates, two resolutions, a permuted and an unpermuted run are
different points. A table without config columns (the paper's tables, records written before the
config was kept) falls back to model (or label), fraction and examples_seen, and :attr:`Selection.note`
says so.

``best_over`` keys (``--best-over train.lr``, repeatable): among configurations that differ only in
those keys, keep the one whose runs have the highest mean *selection metric*, and report its
reported metric. The selection metric is computed on data the reported metric does not use:
``select_top1`` (upstream top-1 on the held-out selection half of the validation split) by default,
or ``val_top1`` when the table has no ``select_top1`` and the reported metric is a few-shot accuracy.
Selecting on the reported metric itself, or on another k of the same few-shot set, raises
:class:`UserError`, as do a key that is not a config column, ``seed``, and a choice between
configurations none of which has a selection value.

:func:`aggregate` returns one row per kept configuration:

=====================  ==========================================================================
(keys)                 the grouping columns above and the config columns, less the ``best_over`` keys
chosen.<KEY>           the ``best_over`` key's chosen value
selected_by            the selection metric (with ``best_over``)
selection_mean         its mean over the chosen configuration's runs
n_candidates           how many configurations the choice was made among
throughput, ...        means over seeds of measured columns (``means``): they vary from run to run
metric                 the reported metric's column
mean, std              its mean and standard deviation (ddof 1; NaN with one seed) over seeds
ci_low, ci_high        Student-t interval of the mean at ``level``: mean ± t(level, n−1)·std/√n
                       (NaN with one seed)
min, max               the extreme seeds
n_seeds, seeds         how many runs were averaged, and their seeds (``0,1,2``)
config_id              an id of the configuration within this table
aggregation            how the rows were made, in words (:attr:`Selection.note`)
=====================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError
from .results import CHOSEN_PREFIX, config_columns, fewshot_columns, parse_fewshot_column

#: Columns that tell configurations apart besides the config columns (those present are used).
BASE_KEYS = ("family", "model", "label", "size", "fraction", "train_size", "examples_seen", "flops_per_image",
             "pretrain_flops")
#: What tells configurations apart in a table without config columns.
FALLBACK_KEYS = ("family", "model", "label", "fraction", "examples_seen")
#: Columns that change from one seed to the next: averaged, never grouped on.
MEASURED = ("throughput", "device_hours")
#: Columns carried from a configuration's first run (the same in all of them).
CARRIED = ("patch", "params", "epochs")
DEFAULT_SELECT = "select_top1"


def has_values(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and pd.to_numeric(df[column], errors="coerce").notna().any()


def configuration_keys(df: pd.DataFrame) -> tuple[list[str], bool]:
    """The columns that tell configurations apart, and whether the table fell back to the keys of
    a table without config columns."""
    config = config_columns(df)
    if not config:
        return [k for k in FALLBACK_KEYS if k in df.columns], True
    return [k for k in BASE_KEYS if k in df.columns] + config, False


def ids(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """An integer per row, equal for rows with equal values in ``columns`` (missing values equal)."""
    if not len(columns):
        return np.zeros(len(df), dtype=int)
    sub = df[list(columns)].astype(object)
    sub = sub.where(sub.notna(), None)
    keys = np.empty(len(sub), dtype=object)
    keys[:] = list(sub.itertuples(index=False, name=None))
    return pd.factorize(keys)[0]


def t_interval(mean, std, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of a mean of ``n`` observations with sample std ``std`` (NaN for n < 2)."""
    mean, std, n = (np.asarray(v, dtype=float) for v in (mean, std, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + level / 2, np.where(n >= 2, n - 1, np.nan)) * std / np.sqrt(n)
    return mean - half, mean + half


def selection_metric(df: pd.DataFrame, metric: str, select: str | None) -> str:
    """The column ``best_over`` choices are made on (see the module docstring); raises
    :class:`UserError` when there is none or it would use the reported metric's data."""
    fewshot = parse_fewshot_column(metric)

    def independent(column: str) -> bool:  # uses none of the reported metric's data
        other = parse_fewshot_column(column)
        return column != metric and not (other and fewshot and other[0] == fewshot[0])

    allowed = [c for c in (DEFAULT_SELECT, "val_top1", *fewshot_columns(df)) if has_values(df, c) and independent(c)]
    if select is None:
        if has_values(df, DEFAULT_SELECT):
            select = DEFAULT_SELECT
        elif fewshot and has_values(df, "val_top1"):
            select = "val_top1"
        else:
            raise UserError(
                f"--best-over needs a selection metric other than the reported {metric}, and the table has no "
                f"{DEFAULT_SELECT} values (upstream top-1 on the selection half of validation); give "
                f"--select with one of: {', '.join(allowed) or 'none available'}"
                + ("" if fewshot else " (or report a few-shot --metric, which val_top1 may select for)"))
    if select == metric:
        raise UserError(f"--select {select} is the reported metric {metric}: choosing on the numbers that are "
                        f"reported inflates them; select on {DEFAULT_SELECT} (or val_top1 for a few-shot metric)")
    chosen = parse_fewshot_column(select)
    if chosen and fewshot and chosen[0] == fewshot[0]:
        raise UserError(f"--select {select} and the reported metric {metric} both evaluate few-shot set "
                        f"{chosen[0]!r}: choosing on it leaks into the reported numbers; select on "
                        f"{DEFAULT_SELECT} or val_top1")
    if select not in allowed:
        raise UserError(f"--select {select!r} is not an accuracy column with values in the table; allowed: "
                        f"{', '.join(allowed) or 'none'}")
    return select


@dataclass
class Selection:
    """The runs of the configurations kept for one reported metric (:func:`choose`).

    ``runs`` has one row per run with a value of the metric, a ``config_id`` column and, with
    ``best_over``, the ``chosen.<KEY>``, ``selected_by``, ``selection_mean`` and ``n_candidates``
    columns of its configuration.
    """

    runs: pd.DataFrame
    metric: str
    keys: list[str]
    fallback: bool
    best_over: tuple[str, ...] = ()
    selected_by: str | None = None
    level: float = 0.95
    idle: bool = False  # best_over found no two configurations differing only in its keys: nothing was chosen

    @property
    def out_keys(self) -> list[str]:
        """The keys of an aggregated row: the configuration's, less the ``best_over`` keys."""
        return [k for k in self.keys if k not in self.best_over]

    @property
    def note(self) -> str:
        """How the points were made, e.g. ``mean of 3 seeds, 95% t-interval; best train.lr by select_top1``."""
        counts = self.runs.groupby("config_id").size() if len(self.runs) else pd.Series([0])
        lo, hi = int(counts.min()), int(counts.max())
        seeds = f"{lo} seed{'s' if lo != 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"
        text = f"mean of {seeds}, " + (f"{100 * self.level:g}% t-interval" if hi >= 2 else "no interval")
        if self.best_over:
            text += f"; best {', '.join(self.best_over)} by {self.selected_by}"
        if self.fallback:
            text += "; no config columns: runs grouped by model, fraction and examples_seen"
        return text

    def table(self, means: Iterable[str] = MEASURED) -> pd.DataFrame:
        """One row per configuration (columns in the module docstring)."""
        runs = self.runs
        chosen = [c for c in runs.columns if c.startswith(CHOSEN_PREFIX)]
        extra = ["selected_by", "selection_mean", "n_candidates"] if self.best_over else []
        first = [c for c in (*self.out_keys, *chosen, *extra, *CARRIED) if c in runs.columns]
        means = [c for c in dict.fromkeys(means) if c in runs.columns and c not in first]
        g = runs.groupby("config_id", sort=True)
        out = g[first].first() if first else pd.DataFrame(index=g.size().index)
        if means:
            measured = runs[means].apply(pd.to_numeric, errors="coerce").groupby(runs["config_id"], sort=True).mean()
            out[means] = measured
        y = g["_y"]
        out["metric"] = self.metric
        out["mean"], out["std"], out["n_seeds"] = y.mean(), y.std(ddof=1), y.count()
        out["ci_low"], out["ci_high"] = t_interval(out["mean"], out["std"], out["n_seeds"], self.level)
        out["min"], out["max"] = y.min(), y.max()
        out["seeds"] = (g["seed"].agg(lambda s: ",".join(str(int(v)) for v in sorted(s.dropna().unique())))
                        if "seed" in runs.columns else "")
        out["aggregation"] = self.note
        out = out.reset_index()
        out = out[[c for c in out.columns if c != "config_id"] + ["config_id"]]
        order = [c for c in ("family", "model", "label", "fraction", "train_size", "examples_seen") if c in out]
        return out.sort_values([*order, "config_id"], na_position="last", kind="stable").reset_index(drop=True)


def choose(df: pd.DataFrame, metric: str, *, best_over: Sequence[str] = (), select: str | None = None,
           level: float = 0.95) -> Selection:
    """The runs to aggregate for ``metric``: those with a value, of every configuration, or with
    ``best_over`` of the configuration chosen by the selection metric (see the module docstring)."""
    if metric not in df.columns:
        raise UserError(f"metric {metric!r} is not a column of the table")
    if not 0 < level < 1:
        raise UserError(f"level={level} is outside (0, 1)")
    best_over = tuple(dict.fromkeys(best_over))
    if select is not None and not best_over:
        raise UserError(f"--select {select} chooses among the values of a --best-over key; give --best-over KEY too")
    keys, fallback = configuration_keys(df)
    config = config_columns(df)
    for key in best_over:
        if key == "seed":
            raise UserError("--best-over seed: seeds are averaged, never selected; choose a config column")
        if key not in config:
            available = ", ".join(config) if config else "none (the table's runs have no config)"
            raise UserError(f"--best-over {key!r} is not a config column of the table; available: {available}")
    selected_by = selection_metric(df, metric, select) if best_over else None
    runs = df.assign(_y=pd.to_numeric(df[metric], errors="coerce"))
    runs = runs[runs["_y"].notna()].copy()
    runs["config_id"] = ids(runs, keys)
    idle = False
    if best_over:
        runs, idle = _keep_best(runs, keys, best_over, selected_by)
    return Selection(runs.reset_index(drop=True), metric, keys, fallback, best_over, selected_by, level, idle)


def _outer_groups(runs: pd.DataFrame, keys: list[str], best_over: tuple[str, ...]) -> np.ndarray:
    """Configurations less the ``best_over`` keys. For a run with a config that is its config columns
    only: the other keys (flops, train_size...) follow from the config and may change with a
    ``best_over`` key (``data.image_size`` changes ``flops_per_image``). A run without one keeps
    the other keys."""
    config = [k for k in config_columns(runs) if k in keys]
    has_config = runs[config].notna().any(axis=1).to_numpy() if config else np.zeros(len(runs), dtype=bool)
    base = ids(runs, [k for k in keys if k not in config])
    return ids(runs.assign(_base=np.where(has_config, -1, base)), [k for k in config if k not in best_over] + ["_base"])


def _keep_best(runs: pd.DataFrame, keys: list[str], best_over: tuple[str, ...],
               by: str) -> tuple[pd.DataFrame, bool]:
    """The runs of the best configuration of each group, and whether no group had a choice to make."""
    runs = runs.assign(_s=pd.to_numeric(runs[by], errors="coerce"), _group=_outer_groups(runs, keys, best_over))
    cand = runs.groupby("config_id", sort=True).agg(group=("_group", "first"), selection_mean=("_s", "mean"))
    cand["n_candidates"] = cand.groupby("group")["group"].transform("size")
    blind = cand[(cand["n_candidates"] > 1) & cand.groupby("group")["selection_mean"].transform(
        lambda s: s.isna().all())]
    if len(blind):
        row = runs[runs["config_id"] == blind.index[0]].iloc[0]
        where = ", ".join(f"{k}={row[k]}" for k in ("model", "fraction") if k in row.index)
        n = int(blind["n_candidates"].iloc[0])
        raise UserError(f"--best-over {', '.join(best_over)}: {by} has no values for the {n} configurations of "
                        f"{where} to choose among; give --select with a column they have")
    # highest mean selection metric first; ties (and missing values) go to the configuration seen first
    best = (cand.reset_index().sort_values(["group", "selection_mean", "config_id"], ascending=[True, False, True],
                                           na_position="last", kind="stable")
            .drop_duplicates("group").set_index("config_id"))
    runs = runs[runs["config_id"].isin(best.index)].copy()
    idle = bool(cand["n_candidates"].max() <= 1)
    for key in best_over:
        runs[CHOSEN_PREFIX + key] = runs[key]
    runs["selected_by"] = by
    runs["selection_mean"] = runs["config_id"].map(best["selection_mean"])
    runs["n_candidates"] = runs["config_id"].map(best["n_candidates"]).astype(int)
    return runs.drop(columns=["_s", "_group"]), idle


def aggregate(df: pd.DataFrame, metric: str, *, best_over: Sequence[str] = (), select: str | None = None,
              level: float = 0.95, means: Iterable[str] = MEASURED) -> pd.DataFrame:
    """One row per configuration of ``df`` (a table of finished runs) for ``metric``: the mean over
    seeds with its Student-t interval at ``level``; ``best_over`` keys chosen by ``select``
    (default ``select_top1``). Columns in the module docstring."""
    return choose(df, metric, best_over=best_over, select=select, level=level).table(means)


def differing_keys(points: pd.DataFrame, keys: Sequence[str], within: Sequence[str]) -> list[str]:
    """The ``keys`` that take more than one value among rows with equal ``within`` columns (missing
    values count as a value)."""
    keys = [k for k in keys if k in points.columns and k not in within]
    if points.empty or not keys:
        return []
    group = ids(points, within)
    out = []
    for k in keys:
        values = ids(points, [k])
        if pd.DataFrame({"g": group, "v": values}).groupby("g")["v"].nunique().gt(1).any():
            out.append(k)
    return out


def format_value(value) -> str:
    """A config value for a label: ``0.001``, ``32``, ``unset`` for a missing value."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "unset"
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


__all__ = ["BASE_KEYS", "DEFAULT_SELECT", "FALLBACK_KEYS", "MEASURED", "Selection", "aggregate", "choose",
           "configuration_keys", "differing_keys", "format_value", "ids", "selection_metric", "t_interval"]
