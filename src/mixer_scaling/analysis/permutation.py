"""The input-permutation figure (the paper's Fig. 4, bars only) from a results table.

Grouped bars: one group per model (by family: Mixer, ViT, BiT), one bar per ``data.permutation``
(original, patch + pixel, global), height = the mean accuracy over seeds, error bars = its standard
deviation (none for a single seed). Default metric: 5-shot accuracy on the table's first few-shot set
(``val_top1`` when it has none, or on request). Written as ``permutation.{png,pdf,csv}``; the CSV
has one row per (model, permutation) with the mean, std, number of runs and the drop relative to the
same model on the original images (the paper: Mixer unchanged by patch + pixel, ~45% lower under the
global shuffle; the ResNet lower under both, ~75% under global).

    render_permutation(collect(runs_dir).table, "figures/")    # conf/sweep/permutation.yaml's runs
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import UserError
from .figures import FAMILIES, _check_table, _rendering, _save, family_of, plt, resolve_metric
from .results import fewshot_datasets

#: data.permutation value in the table -> bar label (in this order).
PERMUTATIONS = {"original": "original", "patch_pixel": "patch + pixel shuffle", "global": "global shuffle"}
_SHADES = {"original": 1.0, "patch_pixel": 0.6, "global": 0.3}
_HATCH = {"original": "", "patch_pixel": "//", "global": ".."}
STEM = "permutation"


def permutation_points(done: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and count of ``column`` per (family, model, permutation), with the relative drop
    from the model's ``original`` bar."""
    df = done.copy()
    if "permutation" not in df.columns:
        df["permutation"] = "original"
    df["permutation"] = df["permutation"].astype(object).where(df["permutation"].notna(), "original").astype(str)
    unknown = sorted(set(df["permutation"]) - set(PERMUTATIONS))
    if unknown:
        raise UserError(f"permutation {unknown[0]!r} in the table is not one of: {', '.join(PERMUTATIONS)}")
    df["family"] = df["family"].map(family_of)
    df["_y"] = pd.to_numeric(df[column], errors="coerce")
    df = df[df["_y"].notna()]
    if df.empty:
        raise UserError(f"permutation figure: no finished run has a value for {column}")
    agg = (df.groupby(["family", "model", "permutation"], sort=False)["_y"]
           .agg(mean="mean", std="std", n="count").reset_index())
    agg["std"] = agg["std"].fillna(0.0)
    base = agg[agg["permutation"] == "original"].set_index("model")["mean"]
    agg["relative_drop"] = 1.0 - agg["mean"] / agg["model"].map(base)
    fam_order = {f: i for i, f in enumerate(FAMILIES)}
    agg["_f"] = agg["family"].map(fam_order)
    agg["_p"] = agg["permutation"].map({p: i for i, p in enumerate(PERMUTATIONS)})
    agg = agg.sort_values(["_f", "model", "_p"]).drop(columns=["_f", "_p"]).reset_index(drop=True)
    agg.insert(3, "metric", column)
    return agg


def draw_permutation(ax, agg: pd.DataFrame, ylabel: str) -> None:
    from matplotlib.patches import Patch

    models = list(dict.fromkeys(agg["model"]))
    width = 0.8 / len(PERMUTATIONS)
    top = 0.0
    for j, perm in enumerate(PERMUTATIONS):
        for i, model in enumerate(models):
            row = agg[(agg["model"] == model) & (agg["permutation"] == perm)]
            if row.empty:
                continue
            r = row.iloc[0]
            x = i + (j - (len(PERMUTATIONS) - 1) / 2) * width
            y, err = 100 * r["mean"], 100 * r["std"] if r["n"] > 1 else 0.0
            ax.bar(x, y, width * 0.95, color=FAMILIES[r["family"]][0], alpha=_SHADES[perm], hatch=_HATCH[perm],
                   edgecolor="black", linewidth=0.6, yerr=err or None, capsize=3)
            ax.annotate(f"{y:.1f}", (x, y + err), textcoords="offset points", xytext=(0, 2), ha="center",
                        va="bottom", fontsize=7)
            top = max(top, y + err)
    names = [f"{FAMILIES[agg.loc[agg['model'] == m, 'family'].iloc[0]][2]}\n({m})" for m in models]
    ax.set_xticks(range(len(models)), names)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(top, 1e-9) * 1.25)
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor="#7f7f7f", alpha=_SHADES[p], hatch=_HATCH[p], edgecolor="black", label=label)
               for p, label in PERMUTATIONS.items()]
    ax.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)


def render_permutation(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str | None = None) -> list[Path]:
    """Draw the permutation bars from a results table into ``out_dir``; returns the written files.

    ``metric``: None (5-shot on the first few-shot set, else ``val_top1``), ``val_top1``,
    ``fewshot`` or a ``fewshot_<dataset>_<k>`` column. Bad input raises :class:`UserError` before
    anything is written."""
    done = _check_table(df)
    default = "fewshot" if fewshot_datasets(done) else "val_top1"
    m = resolve_metric(done, metric, None, None, default=default)
    agg = permutation_points(done, m.column)
    files: list[str] = []
    with _rendering(out_dir) as tmp:
        fig, ax = plt.subplots(figsize=(1.6 + 2.2 * agg["model"].nunique(), 4.2))
        draw_permutation(ax, agg, m.label)
        seeds = int(agg["n"].max())
        ax.set_title(f"input permutations (Fig. 4); mean over seeds (up to {seeds})" if seeds > 1
                     else "input permutations (Fig. 4); one seed", fontsize=10)
        _save(fig, tmp, STEM, agg, files)
    return [Path(out_dir) / f for f in files]


__all__ = ["PERMUTATIONS", "draw_permutation", "permutation_points", "render_permutation"]
