"""Paper-style figures from a results table, each as PNG, PDF and the CSV of what it draws.

Figure kinds (file stems in brackets):

1. Pareto frontier of accuracy against total pre-training compute [``pareto_compute``]: log x axis
   (FLOPs, device-hours, or TPUv3 core-days for the paper), one colour and marker per family (a timm
   family's from :mod:`..models.families`, or one of its own when it is not registered there), the
   frontier drawn and its points labelled, and a saturating power law of error against compute
   fitted to the frontier (dotted, extrapolated to 10× the largest compute, with its bootstrap band).
2. Accuracy against inference throughput [``pareto_throughput``]: log x axis, frontier drawn
   (higher throughput and higher accuracy are both better).
3. Data scaling [``data_scaling``]: k-shot accuracy (default: 5-shot on the first few-shot set in
   the table) against pre-training set size (log x), one line per model, Mixer solid and the
   baselines dashed as in the paper's Fig. 2 (right), the Student-t interval of the mean as a band
   where a size has several seeds, and per-line power-law fits dotted and extrapolated to 10× the
   largest set.
4. An interactive ``dashboard.html`` of kinds 1-3 and the results table (:mod:`.dashboard`): one
   self-contained page (plotly.js inlined, opens offline from disk), every run a point with its
   run id, model, fraction, seed and metrics on hover, filters by family, size and fraction.
5. Paper reference [``paper_table3_jft_*``, ``paper_table2_*``]: kinds 1 and 2 from the paper's
   Table 3 (JFT-300M rows) and Table 2; with ``overlay_paper`` also [``overlay_compute``,
   ``overlay_throughput``]: the user's points beside the paper's, one panel each (their units differ:
   our hardware and data against TPUv3 cores and ImageNet after fine-tuning).

A point is one configuration (:mod:`.aggregate`): runs that differ only in their seed are averaged,
runs that differ in any config column never are; ``best_over`` keys are chosen per configuration
by a selection metric. Each figure's title and CSV (``aggregation`` column) say how. When a model
has several configurations at one data size (two learning rates, say), each is its own point and
its own line, labelled by the keys that differ, and the summary suggests ``--best-over <key>``.

Fits need more points than their three parameters: at least 4 distinct x values, or 3 with
repeated runs (seeds); otherwise the curve is not drawn and the summary gives the plain log-log
slope. Fits use every seed of a line (or of the frontier's configurations), so their stratified
bootstrap reflects seed noise. Every fitted parameter goes to ``fits.csv``; the study's answers go
to ``findings.md`` and ``findings.json`` (:mod:`.findings`). Only ``done`` runs are drawn. Figures
are rendered into a temporary folder beside the output folder and moved there only when all of
them succeeded, so bad input (:class:`UserError`, one line) leaves no figure files behind.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..errors import UserError  # noqa: E402
from ..models.families import FAMILIES as REGISTERED, LABEL, OTHER, styles  # noqa: E402
from . import reference  # noqa: E402
from .aggregate import MEASURED, Selection, choose, differing_keys, format_value  # noqa: E402
from .dashboard import DASHBOARD_FILE, write_dashboard  # noqa: E402
from .findings import Findings, study_findings  # noqa: E402
from .fits import PowerLawFit, fit_power_law, fits_table, loglog_slope  # noqa: E402
from .results import (  # noqa: E402
    FINETUNE_PREFIX, REQUIRED_COLUMNS, Summary, accuracy_columns, clean_table, config_columns, done_runs, fewshot_column,
    fewshot_columns, fewshot_datasets, parse_fewshot_column,
)

class _Styles(Mapping):
    """(colour, marker, display name, colormap) of a family, from :mod:`..models.families`: iterates over
    the registered families and ``other``; looks up any label (an unregistered one gets its own style)."""

    def __iter__(self):
        return iter([*REGISTERED, OTHER])

    def __len__(self) -> int:
        return len(REGISTERED) + 1

    def __getitem__(self, label):
        return family_styles([label])[family_of(label)]


def family_styles(labels) -> dict[str, tuple[str, str, str, str]]:
    """(colour, marker, display name, colormap) of each family among ``labels`` (after :func:`family_of`),
    in drawing order: registered families in table order, other labels sorted, ``other`` last. Unregistered
    labels get a colour and marker of their own, the same in every figure (:func:`.models.families.styles`)."""
    return {k: (f.color, f.marker, f.display, f.cmap) for k, f in styles([family_of(v) for v in labels]).items()}


FAMILIES = _Styles()  # colour, marker, display name, colormap for per-model shades
COMPUTE_AXES = {
    "flops": ("pretrain_flops", "total pre-training compute (FLOPs)"),
    "device_hours": ("device_hours", "total pre-training compute (device-hours)"),
    "core_days": ("core_days", "total pre-training compute (TPUv3 core-days)"),
}
METRICS = ("val_top1", "fewshot")
EXTRA_ACCURACY = {"real_top1": "ImageNet ReaL top-1", "avg5": "average of 5 transfer tasks",
                  "vtab1k": "VTAB-1k (19 tasks)"}
FORMATS = ("png", "pdf")
DEFAULT_K = 5
EXTRAPOLATE = 10.0  # fits are drawn to this multiple of the largest x
_MANY = 2000  # above this many points, non-frontier markers are rasterised in PDFs
#: Config columns that set the pre-training set size: the data-scaling axis, never a line of its own.
DATA_SIZE_KEYS = ("data.fraction", "data.size")


@dataclass
class Rendered:
    """What a render produced: files (figures, their CSVs, fits.csv, findings), a short text summary
    and the study's findings (None for the paper's tables)."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)
    findings: Findings | None = None

    @property
    def figures(self) -> list[Path]:
        return [f for f in self.files if f.suffix.lstrip(".") in FORMATS]

    @property
    def dashboard(self) -> Path | None:
        """The interactive ``dashboard.html`` (:mod:`.dashboard`), when this render wrote one."""
        return next((f for f in self.files if f.name == DASHBOARD_FILE), None)


@dataclass(frozen=True)
class Metric:
    column: str
    label: str  # axis label, in %


# ----------------------------------------------------------------------------------------------
# Frontier


def pareto_mask(x, y, x_better: str = "lower") -> np.ndarray:
    """True for the points no other point beats: ≤ x (or ≥ x for ``x_better="higher"``) and ≥ y
    with one of the two strict. Points with a NaN coordinate are never on the frontier."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x_better not in ("lower", "higher"):
        raise ValueError(f"x_better={x_better!r}; expected 'lower' or 'higher'")
    key = x if x_better == "lower" else -x
    ok = np.isfinite(key) & np.isfinite(y)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((-y[idx], key[idx]))]  # best x first; equal x: best y first
    mask = np.zeros(len(x), dtype=bool)
    best = -np.inf
    for i in order:
        if y[i] > best:
            mask[i] = True
            best = y[i]
    return mask


# ----------------------------------------------------------------------------------------------
# Choosing what to draw (validated before anything is written)


def family_of(value) -> str:
    """``value`` when it is a family label (``mixer``, ``convnext``, any lowercase identifier), else ``other``."""
    return value if isinstance(value, str) and re.fullmatch(LABEL, value) else OTHER


def resolve_metric(df: pd.DataFrame, metric: str | None, k: int | None, dataset: str | None,
                   default: str = "val_top1", paper: bool = False) -> Metric:
    """The accuracy column to draw, checked to exist and to have values.

    ``metric``: ``val_top1`` (upstream top-1; ImageNet top-1 for the paper's tables), ``fewshot``
    (k-shot accuracy on ``dataset``, default the first few-shot set in the table, k default 5),
    a ``fewshot_<dataset>_<k>`` column, or one of the paper's ``real_top1``, ``avg5``, ``vtab1k``.
    """
    metric = metric or default
    if metric == "fewshot":
        datasets = fewshot_datasets(df)
        if not datasets:
            raise UserError("metric=fewshot: the table has no few-shot columns (fewshot_<dataset>_<k>)")
        dataset = dataset or datasets[0]
        if dataset not in datasets:
            raise UserError(f"few-shot dataset {dataset!r} is not in the table; available: {', '.join(datasets)}")
        k = DEFAULT_K if k is None else k
        shots = sorted(kk for d, kk in filter(None, map(parse_fewshot_column, df.columns)) if d == dataset)
        if k not in shots:
            raise UserError(f"k={k} is not available for few-shot dataset {dataset!r}; "
                            f"available: {', '.join(map(str, shots))}")
        column = fewshot_column(dataset, k)
        label = f"{k}-shot {dataset} accuracy (%)"
    elif metric == "val_top1":
        column, label = "val_top1", "ImageNet top-1 (%)" if paper else "upstream validation top-1 (%)"
    elif parse_fewshot_column(metric):
        if metric not in df.columns:
            raise UserError(f"metric {metric!r} is not in the table; few-shot columns: "
                            f"{', '.join(c for c in df.columns if parse_fewshot_column(c)) or 'none'}")
        d, kk = parse_fewshot_column(metric)
        column, label = metric, f"{kk}-shot {d} accuracy (%)"
    elif metric in EXTRA_ACCURACY and metric in df.columns:
        column, label = metric, f"{EXTRA_ACCURACY[metric]} (%)"
    else:
        extra = [m for m in EXTRA_ACCURACY if m in df.columns]
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join([*METRICS, *extra])} "
                        f"or a fewshot_<dataset>_<k> column")
    if column not in df.columns or not df[column].notna().any():
        have = metrics_with_values(df)
        raise UserError(f"metric {column} has no values in the {len(df)} finished runs; choose another with "
                        f"--metric: {', '.join(have) if have else 'none has values'}")
    return Metric(column, label)


def metrics_with_values(df: pd.DataFrame) -> list[str]:
    """The accuracy columns (``--metric`` values) that have at least one value in ``df``."""
    return [c for c in accuracy_columns(df) if c != "select_top1" and pd.to_numeric(df[c], errors="coerce").notna().any()]


def default_scaling_metric(df: pd.DataFrame, k: int | None, dataset: str | None) -> tuple[str | None, str]:
    """What the data-scaling figure draws when no ``--metric`` is given, and a note when it is not the
    usual default: ``fewshot`` (k-shot on ``dataset``, default the first few-shot set, k=5) when that has
    values; else (no ``--dataset``/``--k`` asked) the first few-shot set whose k-shot column has values,
    then any few-shot column with values, then ``val_top1`` — an all-empty few-shot column (an evaluation
    that did not run) is never the default."""
    if not fewshot_datasets(df):
        return "val_top1", ""
    if dataset is not None or k is not None:
        return "fewshot", ""  # asked for: resolve_metric says what is wrong with it
    usual = fewshot_column(fewshot_datasets(df)[0], DEFAULT_K)
    have = set(metrics_with_values(df))
    if usual in have:
        return "fewshot", ""
    shots = [c for c in fewshot_columns(df) if c in have]
    preferred = [c for c in shots if parse_fewshot_column(c)[1] == DEFAULT_K] or shots
    chosen = preferred[0] if preferred else ("val_top1" if "val_top1" in have else None)
    if chosen is None:
        return "fewshot", ""  # nothing has values: resolve_metric names --metric and says so
    why = f"has no values in the {len(df)} finished runs" if usual in df.columns else "is not in the table"
    return chosen, f"data scaling: {usual} {why}; drawn with {chosen} instead (choose with --metric)"


def _require(df: pd.DataFrame, column: str, what: str, hint: str = "") -> None:
    if column not in df.columns or not pd.to_numeric(df[column], errors="coerce").gt(0).any():
        raise UserError(f"{what}: column {column} has no positive values in the {len(df)} finished runs"
                        + (f"; {hint}" if hint else ""))


def _check_table(df: pd.DataFrame, summary: Summary | None = None) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"results table is missing columns: {', '.join(missing)}")
    if df.empty:
        raise UserError("results table has no runs")
    done = done_runs(df)
    if done.empty:
        raise UserError(f"no finished runs to draw ({(summary or Summary.of_table(df)).line})")
    return done


# ----------------------------------------------------------------------------------------------
# Output folder


@contextmanager
def staging(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A temp folder beside ``out_dir`` whose files move into ``out_dir`` when the block succeeds.

    On an exception nothing is moved, the temp folder is removed, and so are folders this call
    created (when empty).
    """
    out_dir = Path(out_dir)
    created = [p for p in [out_dir, *out_dir.parents] if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # deepest first
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _rendering(out_dir: str | os.PathLike) -> Iterator[Path]:
    """:func:`staging`, and close every figure opened inside the block, whether it succeeded or not."""
    before = set(plt.get_fignums())
    try:
        with staging(out_dir) as tmp:
            yield tmp
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def _save(fig, folder: Path, stem: str, table: pd.DataFrame, files: list[str]) -> None:
    for fmt in FORMATS:
        fig.savefig(folder / f"{stem}.{fmt}", dpi=150 if fmt == "png" else None, bbox_inches="tight")
        files.append(f"{stem}.{fmt}")
    plt.close(fig)
    table.to_csv(folder / f"{stem}.csv", index=False)
    files.append(f"{stem}.csv")


# ----------------------------------------------------------------------------------------------
# Kinds 1 and 2: Pareto frontiers


def _floats(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as floats (NaN where missing or not a number; all NaN when there is no such column)."""
    if column not in df.columns:
        return np.full(len(df), np.nan)
    return pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _variants(points: pd.DataFrame, sel: Selection, at: list[str]) -> dict[str, list[str]]:
    """Per model, the keys in which its configurations at equal ``at`` values differ (what tells its
    points or lines apart beyond the data size)."""
    if sel.fallback:
        keys = [k for k in ("examples_seen",) if k in points.columns]
    else:
        keys = [k for k in config_columns(points) if k not in DATA_SIZE_KEYS]
    return {model: differing_keys(sub, keys, within=at)
            for model, sub in points.groupby(points["model"].astype(str), sort=True)}


def _variant_label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k}={format_value(row[k])}" for k in keys)


def _hints(variants: dict[str, list[str]], sel: Selection) -> list[str]:
    """One line per set of differing keys: which models have several configurations, and the flag
    that keeps one of them."""
    by_keys: dict[tuple[str, ...], list[str]] = {}
    for model, keys in variants.items():
        if keys:
            by_keys.setdefault(tuple(keys), []).append(model)
    lines = []
    if sel.idle:
        lines.append(f"hint: --best-over {', '.join(sel.best_over)} chose nothing: no two configurations differ only "
                     f"in {'it' if len(sel.best_over) == 1 else 'them'}")
    for keys, models in by_keys.items():
        flags = " ".join(f"--best-over {k}" for k in keys)
        by = f" by {sel.selected_by}" if sel.selected_by else ""
        lines.append(f"hint: {', '.join(models)} {'has' if len(models) == 1 else 'have'} several configurations at one "
                     f"data size, differing in {', '.join(keys)}: drawn separately, not averaged; {flags} keeps the "
                     f"best{by or ' by select_top1'}")
    return lines


def _pareto(df: pd.DataFrame, x: str, y: str, x_better: str, *, best_over=(), select: str | None = None,
            level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, Selection, list[str]]:
    """:func:`pareto_points`, with the runs behind the points (``config_id``, ``_y``), the
    selection and the hints about models with several configurations at one data size."""
    d = df.assign(_x=_floats(df, x))
    d = d[np.isfinite(d["_x"]) & (d["_x"] > 0)]
    sel = choose(d, y, best_over=best_over, select=select, level=level)
    agg = sel.table(means=("_x", *MEASURED))
    agg["family"] = [family_of(f) for f in agg["family"]]
    agg = agg.rename(columns={"_x": "x", "mean": "y"})
    at = [c for c in ("fraction",) if c in agg.columns]
    variants = _variants(agg, sel, at) if not agg.empty else {}
    if "label" in agg.columns:
        labels = agg.pop("label").astype(str).tolist()
    else:
        several = (agg.groupby("model")["fraction"].transform("nunique").gt(1) if "fraction" in agg.columns
                   else pd.Series(False, index=agg.index))
        labels = []
        for (_, r), many in zip(agg.iterrows(), several):
            parts = [f"{100 * r['fraction']:g}%"] if many else []
            keys = variants.get(str(r["model"]), [])
            if keys:
                parts.append(_variant_label(r, keys))
            labels.append(f"{r['model']} ({', '.join(parts)})" if parts else str(r["model"]))
    agg.insert(0, "label", labels)
    agg["on_frontier"] = pareto_mask(agg["x"], agg["y"], x_better)
    front = ["label", "family", "model", "fraction", "examples_seen", "x", "y", "std", "ci_low", "ci_high", "n_seeds",
             "seeds", "on_frontier"]
    front = [c for c in front if c in agg.columns]
    pts = agg[front + [c for c in agg.columns if c not in front]]
    return pts, sel.runs, sel, _hints(variants, sel)


def pareto_points(df: pd.DataFrame, x: str, y: str, x_better: str, *, best_over=(), select: str | None = None,
                  level: float = 0.95) -> pd.DataFrame:
    """The points of a Pareto figure (and its CSV): one per configuration (:mod:`.aggregate`), seeds
    averaged, ``best_over`` keys chosen by ``select``. Columns: label, family, model, fraction,
    examples_seen, x (mean over seeds), y (mean), std, ci_low, ci_high (Student-t at ``level``),
    n_seeds, seeds, on_frontier, then the configuration's keys, ``chosen.*`` values, measured means
    and ``aggregation``. Labels are the ``label`` column (paper tables) or the model, plus the data
    fraction when a model was trained on several, plus the config keys that tell apart a model's
    configurations at one fraction."""
    return _pareto(df, x, y, x_better, best_over=best_over, select=select, level=level)[0]


_LABEL_SPOTS = [(5, 3, "left"), (5, -10, "left"), (-5, 3, "right"), (-5, -10, "right"),
                (5, 12, "left"), (5, -19, "left"), (-5, 12, "right"), (-5, -19, "right")]


def place_labels(ax, x: np.ndarray, y: np.ndarray, labels: list[str], fontsize: float = 7) -> None:
    """Annotate points, each label at the first of a few spots around its point that overlaps
    neither an earlier label nor another labelled point (estimated text boxes, display units)."""
    if len(labels) == 0:
        return
    ax.autoscale_view()
    px = ax.figure.dpi / 72.0  # display units per point
    xy = ax.transData.transform(np.column_stack([x, y]))
    marker = 4 * px
    taken = [(cx - marker, cy - marker, cx + marker, cy + marker) for cx, cy in xy]
    for i, (label, (cx, cy)) in enumerate(zip(labels, xy)):
        w, h = 0.55 * fontsize * px * len(label), fontsize * px
        chosen = _LABEL_SPOTS[0]
        for dx, dy, ha in _LABEL_SPOTS:
            x0 = cx + dx * px - (w if ha == "right" else 0.0)
            box = (x0, cy + dy * px, x0 + w, cy + dy * px + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for j, b in enumerate(taken) if j != i):
                chosen = (dx, dy, ha)
                break
        dx, dy, ha = chosen
        x0 = cx + dx * px - (w if ha == "right" else 0.0)
        taken.append((x0, cy + dy * px, x0 + w, cy + dy * px + h))
        ax.annotate(label, (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, fontsize=fontsize)


def worth_fitting(x: pd.Series) -> bool:
    """Three parameters need more than three points: ≥ 4 distinct x, or 3 with repeats (seeds)."""
    x = pd.Series(x).dropna()
    return x.nunique() >= 4 or (x.nunique() == 3 and len(x) > 3)


def _frontier_fit(pts: pd.DataFrame, runs: pd.DataFrame, n_boot: int, seed: int) -> PowerLawFit | None:
    """The power law of error against x through the frontier's configurations, fitted to every seed
    of them (each at its configuration's mean x), so the bootstrap resamples seeds."""
    front = pts[pts["on_frontier"]]
    obs = runs[runs["config_id"].isin(front["config_id"])]
    x = obs["config_id"].map(front.set_index("config_id")["x"])
    if not worth_fitting(x):
        return None
    try:
        return fit_power_law(x, 1.0 - obs["_y"], n_boot=n_boot, seed=seed)
    except UserError:
        return None


def _log_x(ax) -> None:
    """A log x axis readable at any span, with labels that never collide: with two or more powers of ten
    in view only they are labelled; with fewer, the minor ticks too, in short form (``2e+13``, not
    matplotlib's ``2×10^13``), only those at 2× and 5× a power of ten when the axis spans over half a decade."""
    ax.set_xscale("log")
    ax.autoscale_view()
    lo, hi = ax.get_xlim()
    if not 0 < lo < hi:
        return
    decades = math.log10(hi / lo)
    if math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1 >= 2:
        ax.xaxis.set_minor_formatter(NullFormatter())
        return

    def short(value: float, _pos=None) -> str:
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        if decades > 0.5 and not any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)):
            return ""
        return f"{value:.2g}"

    ax.xaxis.set_minor_formatter(FuncFormatter(short))
    ax.xaxis.set_major_formatter(FuncFormatter(short))


def draw_pareto(ax, pts: pd.DataFrame, xlabel: str, ylabel: str, x_better: str, title: str = "",
                fit: PowerLawFit | None = None) -> None:
    many = len(pts) > _MANY
    for fam, (color, marker, name, _) in family_styles(pts["family"]).items():
        sub = pts[pts["family"] == fam]
        if sub.empty:
            continue
        off, on = sub[~sub["on_frontier"]], sub[sub["on_frontier"]]
        ax.scatter(off["x"], 100 * off["y"], s=12 if many else 30, color=color, marker=marker, alpha=0.35,
                   linewidths=0, rasterized=many)
        ax.scatter(on["x"], 100 * on["y"], s=45, color=color, marker=marker, edgecolors="black",
                   linewidths=0.6, zorder=3, label=f"{name} ({len(sub)})")
    front = pts[pts["on_frontier"]].sort_values("x")
    ax.plot(front["x"], 100 * front["y"], color="black", lw=1, alpha=0.7, zorder=2, label="Pareto frontier")
    if fit is not None:
        lo_x, hi_x = front["x"].min(), front["x"].max() * EXTRAPOLATE
        grid = np.geomspace(lo_x, hi_x, 100)
        ax.plot(grid, 100 * (1 - fit.predict(grid)), ls=":", color="black", lw=1,
                label=f"frontier fit: err = a·C^(-b) + c, b={fit.b:.2f}")
        lo, hi = fit.band(grid)
        if np.isfinite(lo).all():
            ax.fill_between(grid, 100 * (1 - hi), 100 * (1 - lo), color="black", alpha=0.08, lw=0)
    _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    place_labels(ax, front["x"].to_numpy(), 100 * front["y"].to_numpy(), front["label"].tolist())
    corner = "lower right" if x_better == "lower" else "lower left"
    ax.legend(fontsize=7, loc=corner if many else "best")  # "best" hides no point, but is slow on many


def _frontier_line(pts: pd.DataFrame, what: str) -> str:
    front = pts[pts["on_frontier"]].sort_values("x")
    fams = front["family"].value_counts()
    names = family_styles(fams.index)
    by_family = ", ".join(f"{names[f][2]} {n}" for f, n in fams.items())
    return f"{what}: {len(front)} of {len(pts)} points on the frontier ({by_family}): {', '.join(front['label'])}"


# ----------------------------------------------------------------------------------------------
# Kind 3: data scaling


def _data_axis(df: pd.DataFrame) -> tuple[str, str]:
    if "train_size" in df.columns and pd.to_numeric(df["train_size"], errors="coerce").gt(0).any():
        return "train_size", "pre-training set size (examples)"
    if "fraction" in df.columns and pd.to_numeric(df["fraction"], errors="coerce").gt(0).any():
        return "fraction", "pre-training set size (fraction of the full set)"
    raise UserError("data scaling: neither train_size nor fraction has positive values in the finished runs")


def _data_scaling(df: pd.DataFrame, x: str, y: str, *, best_over=(), select: str | None = None,
                  level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, Selection, list[str]]:
    """:func:`data_scaling_points`, with the runs behind them (``line``, ``x``, ``y``), the
    selection and the hints about models with several configurations at one data size."""
    d = df.assign(_x=_floats(df, x))
    d = d[np.isfinite(d["_x"]) & (d["_x"] > 0)]
    sel = choose(d, y, best_over=best_over, select=select, level=level)
    agg = sel.table(means=("_x", *MEASURED)).rename(columns={"_x": "x"})
    agg["family"] = [family_of(f) for f in agg["family"]]
    variants = _variants(agg, sel, ["x"]) if not agg.empty else {}
    agg.insert(0, "line", [f"{r['model']} ({_variant_label(r, variants[str(r['model'])])})"
                           if variants.get(str(r["model"])) else str(r["model"]) for _, r in agg.iterrows()])
    front = ["family", "model", "line", "x", "mean", "std", "ci_low", "ci_high", "min", "max", "n_seeds", "seeds"]
    agg = agg[front + [c for c in agg.columns if c not in front]]
    runs = sel.runs.assign(line=sel.runs["config_id"].map(agg.set_index("config_id")["line"]),
                           family=[family_of(f) for f in sel.runs["family"]], x=sel.runs["_x"], y=sel.runs["_y"])
    return agg, runs, sel, _hints(variants, sel)


def data_scaling_points(df: pd.DataFrame, x: str, y: str, *, best_over=(), select: str | None = None,
                        level: float = 0.95) -> pd.DataFrame:
    """The data-scaling figure's CSV: one row per configuration and data size (:mod:`.aggregate`)
    with family, model, line (the model, plus the config keys that tell its configurations at one
    size apart), x, mean, std, ci_low, ci_high (Student-t at ``level``), min, max, n_seeds, seeds,
    then the configuration's keys, ``chosen.*`` values and ``aggregation``."""
    return _data_scaling(df, x, y, best_over=best_over, select=select, level=level)[0]


def draw_data_scaling(ax, agg: pd.DataFrame, xlabel: str, ylabel: str, fits: dict[str, PowerLawFit]) -> None:
    for fam, (_, marker, _, cmap_name) in family_styles(agg["family"]).items():
        lines = sorted(agg.loc[agg["family"] == fam, "line"].unique())
        cmap = plt.get_cmap(cmap_name)
        for i, line in enumerate(lines):
            color = cmap(0.5 + 0.45 * i / max(len(lines) - 1, 1))
            m = agg[agg["line"] == line].sort_values("x")
            style = "-" if fam == "mixer" else "--"
            fit = fits.get(line)
            label = line if fit is None else f"{line} (b={fit.b:.2f})"
            ax.plot(m["x"], 100 * m["mean"], ls=style, marker=marker, color=color, label=label, lw=1.5, ms=5)
            if (m["n_seeds"] > 1).any():  # the seed-to-seed spread (the mean's interval is in the CSV)
                ax.fill_between(m["x"], 100 * m["min"], 100 * m["max"], color=color, alpha=0.2, lw=0)
            if fit is not None:
                grid = np.geomspace(m["x"].min(), m["x"].max() * EXTRAPOLATE, 80)
                ax.plot(grid, 100 * (1 - fit.predict(grid)), ls=":", color=color, lw=1)
                lo, hi = fit.band(grid)
                if np.isfinite(lo).all():
                    ax.fill_between(grid, 100 * (1 - hi), 100 * (1 - lo), color=color, alpha=0.07, lw=0)
    _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.0), min(hi, 100.0))  # accuracies: an extrapolated band never leaves [0, 100]
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _scaling_fits(runs: pd.DataFrame, n_boot: int, seed: int) -> dict[str, PowerLawFit]:
    """A power law per line, fitted to every seed at every size (``runs`` from :func:`_data_scaling`)."""
    fits = {}
    for line, sub in runs.groupby("line", sort=True):
        if not worth_fitting(sub["x"]):
            continue
        try:
            fits[line] = fit_power_law(sub["x"], 1.0 - sub["y"], n_boot=n_boot, seed=seed)
        except UserError:
            continue
    return fits


def _slopes_line(runs: pd.DataFrame, fits: dict[str, PowerLawFit], what: str) -> str:
    parts = []
    for line, sub in runs.groupby("line", sort=True):
        fit = fits.get(line)
        if fit is not None:
            lo, hi = fit.ci["b"]
            ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
            parts.append(f"{line} b={fit.b:.2f}{ci} c={fit.c:.3f}")
        else:
            s = loglog_slope(sub["x"], 1 - sub["y"])
            parts.append(f"{line} " + (f"log-log slope of err {s:.2f} (too few sizes to fit)" if np.isfinite(s)
                                       else "one size only"))
    return f"{what}, err = a·n^(-b) + c: " + "; ".join(parts)


# ----------------------------------------------------------------------------------------------
# Rendering


def _pareto_pair(done: pd.DataFrame, metric: Metric, compute: str, n_boot: int, seed: int,
                 throughput_label: str = "inference throughput (img/s)", **choice):
    """Both Pareto figures' points, runs and the compute frontier's fit; ``choice``: ``best_over``,
    ``select``, ``level`` (:func:`.aggregate.choose`)."""
    col, xlabel = COMPUTE_AXES[compute]
    _require(done, col, f"compute={compute}", "choose another --compute")
    _require(done, "throughput", "throughput figure")
    pc, pc_runs, sel, hints = _pareto(done, col, metric.column, "lower", **choice)
    pt, _, _, _ = _pareto(done, "throughput", metric.column, "higher", **choice)
    fit = _frontier_fit(pc, pc_runs, n_boot, seed)
    return (pc, pc_runs, xlabel, fit), (pt, throughput_label), sel, hints


def finetune_grid_keys(ft: pd.DataFrame) -> list[str]:
    """The fine-tuning grid of a fine-tuned table: the ``finetune.*`` columns whose value differs between
    the fine-tunes of one parent (``finetune.train.lr``, ``finetune.image_size``)."""
    keys = [c for c in ft.columns if isinstance(c, str) and c.startswith(FINETUNE_PREFIX)]
    if ft.empty or "parent_run_id" not in ft.columns:
        return []
    text = ft[keys].astype("string").fillna("<NA>")
    return [k for k in keys if (text[k].groupby(ft["parent_run_id"]).nunique() > 1).any()]


def finetuned_points(ft: pd.DataFrame, compute: str = "flops", *, best_over=(), select: str | None = None,
                     level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame, Selection]:
    """The points of the fine-tuned Pareto figure (paper Fig. 2 left): per pre-training configuration, the
    fine-tuned ``val_top1`` (downstream report half) of the fine-tuning setting that is best on
    ``select_top1`` (the selection half) — the grid keys (:func:`finetune_grid_keys`) and any ``best_over``
    key chosen together, as ``--best-over`` does for pre-training — against the parent's pre-training
    compute; seeds of the parents averaged. Besides the columns of :func:`pareto_points`, ``parent_run_ids``
    and ``finetune_run_ids`` name the runs behind each point and ``chosen.finetune.*`` the setting. Returns
    the points, the fine-tunes behind them (``config_id``, ``_y``: what the findings' frontier bootstrap
    resamples) and the selection."""
    col = COMPUTE_AXES[compute][0]
    done = ft[ft["status"] == "done"] if "status" in ft.columns else ft
    _require(done, col, f"compute={compute}", "choose another --compute")
    keys = tuple(dict.fromkeys([*finetune_grid_keys(done), *(k for k in best_over if k in done.columns)]))
    pts, runs, sel, _ = _pareto(done, col, "val_top1", "lower", best_over=keys, select=select, level=level)
    if not pts.empty:
        names = runs.groupby("config_id").agg(parent_run_ids=("parent_run_id", lambda v: ",".join(sorted(set(v)))),
                                              finetune_run_ids=("run_id", lambda v: ",".join(sorted(set(v)))))
        pts = pts.join(names, on="config_id")
    return pts, runs, sel


def _titled(title: str, sel: Selection) -> str:
    return f"{title}\n{sel.note}"


@dataclass
class Study:
    """Everything the figures draw and the findings state, computed before anything is written
    (:func:`study`)."""

    done: pd.DataFrame
    pareto_metric: Metric
    scaling_metric: Metric
    compute: str
    pc: pd.DataFrame  # compute-figure points
    pc_runs: pd.DataFrame  # the runs behind them
    compute_label: str
    compute_fit: PowerLawFit | None
    pt: pd.DataFrame  # throughput-figure points
    throughput_label: str
    pareto_selection: Selection
    x_col: str
    x_label: str
    scaling: pd.DataFrame  # data-scaling points (the figure's CSV)
    scaling_runs: pd.DataFrame
    scaling_selection: Selection
    fits: dict[str, PowerLawFit]
    hints: list[str]
    findings: Findings
    notes: list[str] = field(default_factory=list)  # what cleaning dropped, a metric fallen back from


def study(df: pd.DataFrame, *, metric: str | None = None, k: int | None = None, dataset: str | None = None,
          compute: str = "flops", summary: Summary | None = None, n_boot: int = 200, seed: int = 0,
          best_over=(), select: str | None = None, level: float = 0.95) -> Study:
    """The points, fits and findings of :func:`render` (same arguments), without drawing or writing."""
    if compute not in COMPUTE_AXES:
        raise UserError(f"unknown compute axis {compute!r}; choose one of: {', '.join(COMPUTE_AXES)}")
    if n_boot < 0:
        raise UserError(f"--boot {n_boot} is negative; give a number of bootstrap resamples >= 0")
    df, notes = clean_table(df)  # one row per run id, accuracies in [0, 1] (a no-op on a collected table)
    done = _check_table(df, summary)
    pareto_metric = resolve_metric(done, metric, k, dataset)
    scaling_default, fallback = default_scaling_metric(done, k, dataset) if metric is None else ("fewshot", "")
    scaling_metric = resolve_metric(done, metric, k, dataset, default=scaling_default)
    notes += [fallback] if fallback else []
    choice = dict(best_over=tuple(best_over), select=select, level=level)
    (pc, pc_runs, xlabel, cfit), (pt, tlabel), psel, hints = _pareto_pair(done, pareto_metric, compute, n_boot,
                                                                          seed, **choice)
    x_col, x_label = _data_axis(done)
    agg, scaling_runs, ssel, scaling_hints = _data_scaling(done, x_col, scaling_metric.column, **choice)
    if agg.empty:
        raise UserError(f"data scaling: no finished run has both {x_col} and {scaling_metric.column}")
    fits = _scaling_fits(scaling_runs, n_boot, seed)
    found = study_findings(scaling_runs, fits, metric=scaling_metric.column, x=x_col, compute=pc, compute_runs=pc_runs,
                           throughput=pt, pareto_metric=pareto_metric.column, compute_axis=COMPUTE_AXES[compute][0],
                           aggregation=ssel.note, n_boot=n_boot, level=level, seed=seed)
    return Study(done, pareto_metric, scaling_metric, compute, pc, pc_runs, xlabel, cfit, pt, tlabel, psel, x_col,
                 x_label, agg, scaling_runs, ssel, fits, list(dict.fromkeys(hints + scaling_hints)), found, notes)


def render(df: pd.DataFrame, out_dir: str | os.PathLike, *, metric: str | None = None, k: int | None = None,
           dataset: str | None = None, compute: str = "flops", overlay_paper: bool = False,
           summary: Summary | None = None, n_boot: int = 200, seed: int = 0, best_over=(),
           select: str | None = None, level: float = 0.95, finetunes: pd.DataFrame | None = None) -> Rendered:
    """Figures 1–3 (and the paper overlays), ``fits.csv``, the findings (``findings.md``,
    ``findings.json``) and ``dashboard.html`` (figure kind 4) from a results table into ``out_dir``.

    ``finetunes`` (:func:`~.results.collect_finetunes`) with finished rows adds ``pareto_finetuned``: accuracy
    after fine-tuning against the parent's pre-training compute (:func:`finetuned_points`), as the paper's
    Fig. 2 left.

    ``metric`` applies to every figure; by default the Pareto figures use ``val_top1`` and the
    data-scaling figure ``fewshot`` (k=5 on the first few-shot set; ``val_top1`` when the table
    has no few-shot columns). ``compute``: ``flops`` (3 × forward FLOPs × examples seen) or
    ``device_hours``. Points are configurations, seeds averaged with a Student-t interval at
    ``level``; ``best_over`` config keys are chosen per configuration by ``select`` (default
    ``select_top1``; :mod:`.aggregate`). ``n_boot`` and ``seed``: the bootstrap of the fits and the
    findings.
    """
    st = study(df, metric=metric, k=k, dataset=dataset, compute=compute, summary=summary, n_boot=n_boot, seed=seed,
               best_over=best_over, select=select, level=level)
    done, pareto_metric, scaling_metric = st.done, st.pareto_metric, st.scaling_metric
    pc, xlabel, cfit, pt, tlabel, psel = (st.pc, st.compute_label, st.compute_fit, st.pt, st.throughput_label,
                                          st.pareto_selection)
    x_col, x_label, agg, scaling_runs, ssel, fits, found = (st.x_col, st.x_label, st.scaling, st.scaling_runs,
                                                            st.scaling_selection, st.fits, st.findings)
    if overlay_paper:
        paper = reference.paper_results(3, reference.JFT)
        pm = resolve_metric(paper, "val_top1", None, None, paper=True)
        (ppc, _, pxlabel, pfit), (ppt, ptlabel), _, _ = _pareto_pair(
            paper, pm, "core_days", n_boot, seed, throughput_label="inference throughput (img/s/core)")

    ft_pts = None
    if finetunes is not None and not finetunes.empty and (finetunes["status"] == "done").any():
        ft_pts, ft_runs, ft_sel = finetuned_points(finetunes, compute, best_over=best_over, select=select,
                                                   level=level)
        found.add_frontier("fine-tuned compute", ft_pts, ft_runs, "lower", n_boot, seed,
                           "val_top1 after fine-tuning", f"parent's {COMPUTE_AXES[compute][0]}")
    df = clean_table(df)[0]  # as study() counted it
    n_skipped = len(df) - len(done)
    note = f" ({len(done)} finished runs" + (f"; {n_skipped} not finished, left out)" if n_skipped else ")")
    lines = [(summary or Summary.of_table(df)).line + f"; figures use the {len(done)} done runs", *st.notes]
    files: list[str] = []
    with _rendering(out_dir) as tmp:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        draw_pareto(ax, pc, xlabel, pareto_metric.label, "lower",
                    _titled("accuracy vs pre-training compute" + note, psel), cfit)
        _save(fig, tmp, "pareto_compute", pc, files)
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        draw_pareto(ax, pt, tlabel, pareto_metric.label, "higher", _titled("accuracy vs throughput" + note, psel))
        _save(fig, tmp, "pareto_throughput", pt, files)
        if ft_pts is not None and not ft_pts.empty:
            fig, ax = plt.subplots(figsize=(6.4, 4.8))
            draw_pareto(ax, ft_pts, f"parent's {xlabel}", "top-1 after fine-tuning (%)", "lower",
                        _titled(f"fine-tuned accuracy vs pre-training compute ({int(ft_pts['n_seeds'].sum())} "
                                "parents)", ft_sel))
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: a few points, none hidden
            _save(fig, tmp, "pareto_finetuned", ft_pts, files)
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        draw_data_scaling(ax, agg, x_label, scaling_metric.label, fits)
        ax.set_title(_titled("data scaling" + note, ssel) + "; bands: range over seeds", fontsize=10)
        _save(fig, tmp, "data_scaling", agg, files)
        fit_rows = {f"data_scaling/{m}": f for m, f in fits.items()}
        kinds = {f"data_scaling/{m}": f"{scaling_metric.column} vs {x_col}" for m in fits}
        if cfit is not None:
            fit_rows["compute_frontier"] = cfit
            kinds["compute_frontier"] = f"{pareto_metric.column} vs {COMPUTE_AXES[compute][0]} (frontier)"
        if overlay_paper:
            for stem, (ours, ox, ofit, theirs, tx, tfit, better) in {
                "overlay_compute": (pc, xlabel, cfit, ppc, pxlabel, pfit, "lower"),
                "overlay_throughput": (pt, tlabel, None, ppt, ptlabel, None, "higher"),
            }.items():
                fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
                draw_pareto(a1, ours, ox, pareto_metric.label, better, _titled("ours" + note, psel), ofit)
                draw_pareto(a2, theirs, tx, pm.label, better, "paper, Table 3 (JFT-300M pre-training)", tfit)
                _save(fig, tmp, stem, pd.concat([ours.assign(source="ours"), theirs.assign(source="paper")]), files)
            if pfit is not None:
                fit_rows["paper_table3_jft/compute_frontier"] = pfit
                kinds["paper_table3_jft/compute_frontier"] = "ImageNet top-1 vs TPUv3 core-days (frontier)"
        table = fits_table(fit_rows, fit=kinds)
        table.to_csv(tmp / "fits.csv", index=False)
        files.append("fits.csv")
        files.extend(found.write(tmp))
        studies = df["study"].dropna().unique() if "study" in df.columns else []
        write_dashboard(tmp / DASHBOARD_FILE, st, df, title=f"{studies[0] if len(studies) == 1 else 'Scaling study'}"
                                                             ": architectures compared", finetunes=finetunes)
        files.append(DASHBOARD_FILE)
    lines += [
        f"points: Pareto ({pareto_metric.column}) {psel.note}; data scaling ({scaling_metric.column}) {ssel.note}",
        _frontier_line(pc, f"compute frontier ({pareto_metric.column} vs {compute})"),
        _frontier_line(pt, f"throughput frontier ({pareto_metric.column} vs img/s)"),
        _slopes_line(scaling_runs, fits, f"data scaling ({scaling_metric.column} vs {x_col})"),
    ]
    if cfit is not None:
        lines.append(f"compute frontier fit: err = a·C^(-b) + c, b={cfit.b:.3f}, c={cfit.c:.3f}")
    if ft_pts is not None and not ft_pts.empty:
        lines.append(_frontier_line(ft_pts, f"fine-tuned frontier (val_top1 after fine-tuning vs the parent's "
                                            f"{compute}; {ft_sel.note})"))
    lines += st.hints
    lines += found.short()
    return Rendered(Path(out_dir), [Path(out_dir) / f for f in files], lines, table, found)


def render_paper(out_dir: str | os.PathLike, *, metric: str | None = None, compute: str = "core_days",
                 n_boot: int = 200, seed: int = 0) -> Rendered:
    """Kind 5: the Pareto figures from the paper's Table 3 (JFT-300M rows) and Table 2 into ``out_dir``.

    Compute is in TPUv3 core-days (``compute="device_hours"``: core-hours), throughput in
    img/s/core, accuracy ImageNet top-1 after fine-tuning (``metric`` may also be ``real_top1`` or
    ``avg5``). The paper gives no data-scaling
    numbers in its tables, so there is no data-scaling figure here.
    """
    if compute not in ("core_days", "device_hours"):
        raise UserError(f"compute={compute!r}: the paper gives compute in TPUv3 core-days only; "
                        "choose core_days or device_hours (core-hours)")
    t3 = reference.paper_results(3, reference.JFT)
    t2 = reference.paper_results(2, None)
    m3 = resolve_metric(t3, metric, None, None, paper=True)
    m2 = resolve_metric(t2, metric, None, None, paper=True)
    panels = {}
    for stem, table, m, title in (("paper_table3_jft", t3, m3, "paper Table 3, JFT-300M pre-training"),
                                  ("paper_table2", t2, m2, "paper Table 2 (pre-training data varies)")):
        panels[stem] = (title, m) + _pareto_pair(table, m, compute, n_boot, seed,
                                                 throughput_label="inference throughput (img/s/core)")[:2]
    files: list[str] = []
    fit_rows, kinds, lines = {}, {}, []
    with _rendering(out_dir) as tmp:
        for stem, (title, m, (pc, _, xlabel, cfit), (pt, tlabel)) in panels.items():
            fig, ax = plt.subplots(figsize=(6.4, 4.8))
            draw_pareto(ax, pc, xlabel, m.label, "lower", title, cfit)
            _save(fig, tmp, f"{stem}_compute", pc, files)
            fig, ax = plt.subplots(figsize=(6.4, 4.8))
            draw_pareto(ax, pt, tlabel, m.label, "higher", title)
            _save(fig, tmp, f"{stem}_throughput", pt, files)
            if cfit is not None:
                fit_rows[f"{stem}/compute_frontier"] = cfit
                kinds[f"{stem}/compute_frontier"] = f"{m.column} vs {compute} (frontier)"
            lines.append(_frontier_line(pc, f"{stem} compute frontier ({m.column} vs {compute})"))
            lines.append(_frontier_line(pt, f"{stem} throughput frontier ({m.column} vs img/s/core)"))
        table = fits_table(fit_rows, fit=kinds)
        table.to_csv(tmp / "fits.csv", index=False)
        files.append("fits.csv")
    return Rendered(Path(out_dir), [Path(out_dir) / f for f in files], lines, table)


__all__ = ["COMPUTE_AXES", "DATA_SIZE_KEYS", "FAMILIES", "METRICS", "Rendered", "data_scaling_points", "family_styles",
           "finetuned_points", "pareto_mask", "pareto_points", "render", "render_paper", "resolve_metric", "staging", "Study", "study"]
