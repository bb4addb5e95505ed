"""One self-contained interactive dashboard of a study: ``dashboard.html`` (Plotly).

:func:`render <mixer_scaling.analysis.figures.render>` writes it beside the PNG/PDF/CSV figures. The page
needs no network and no server: plotly.js and the page's own script are inlined, so it opens from disk
(``file://``) in any browser, offline. It shows, for the finished runs of the table:

1. accuracy against pre-training compute (log x, one colour per family),
2. accuracy against inference throughput (log x),
3. data scaling: the data-scaling metric against pre-training set size (log x), one colour per model,
   each run a point and a line through the mean over seeds at each size,
4. when the study has fine-tunes (a second stage): top-1 after fine-tuning against the parent's
   pre-training compute (the paper's Fig. 2 left), one point per fine-tune (every setting of the grid;
   the hover names its parent and setting), filtered by its parent's family, size and fraction,

and the results table (every run, finished or not). Each point is one run: hovering shows its run id,
model, fraction, seed and metrics. Check boxes filter by family, size and fraction; the plots, the
Pareto frontiers, the per-size means and the table follow. Unlike the PNG figures (one point per
configuration, seeds averaged), the dashboard draws every run, so each Pareto frontier here is the
frontier of the runs shown (``figures.pareto_mask``'s rule, recomputed in the page for the filter).

The metrics are the study's (:class:`~mixer_scaling.analysis.figures.Study`): the Pareto views draw its
``pareto_metric``, the data-scaling view its ``scaling_metric`` on its ``x_col``.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from matplotlib import colormaps, colors
from plotly.offline import get_plotlyjs

from ..records import write_temp
from .results import FINETUNE_PREFIX, fewshot_columns

DASHBOARD_FILE = "dashboard.html"
#: Results-table columns the page's table shows (then every few-shot column), in this order.
TABLE_COLUMNS = ("run_id", "family", "model", "size", "fraction", "seed", "status", "train_size", "pretrain_flops",
                 "throughput", "val_top1", "select_top1")
FILTERS = ("family", "size", "fraction")  # what the check boxes filter by: row keys of the page's RUNS
_PERCENT = ("val_top1", "select_top1")


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _text(value: Any) -> str:
    """A table cell as display text ('' for missing)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _fraction_key(value: Any) -> str:
    x = _finite(value)
    return "" if x is None else f"{x:g}"


def _filter_values(row: pd.Series) -> dict[str, str]:
    """A run's values of the check boxes (:data:`FILTERS`): the page's RUNS entry."""
    return {"family": _text(row.get("family")), "size": _text(row.get("size")),
            "fraction": _fraction_key(row.get("fraction"))}


def _hover(row: pd.Series, metrics: list[tuple[str, str]]) -> str:
    """A run's hover text (Plotly's HTML subset; every value escaped)."""
    e = lambda v: html.escape(_text(v))  # noqa: E731
    lines = [f"run <b>{e(row.get('run_id'))}</b>",
             f"model {e(row.get('model'))} · fraction {e(_fraction_key(row.get('fraction')))} · seed {e(row.get('seed'))}"]
    for col, label in metrics:
        v = _finite(row.get(col))
        if v is not None:
            lines.append(f"{html.escape(label)} {100 * v:.2f}%")
    for col, label, unit in (("pretrain_flops", "compute", " FLOPs"), ("throughput", "throughput", " img/s"),
                             ("train_size", "pre-training set", " images")):
        v = _finite(row.get(col))
        if v is not None:
            lines.append(f"{label} {v:.4g}{unit}")
    if _text(row.get("parent_run_id")):  # a fine-tune: its parent, and the setting of the grid it ran
        lines.append(f"parent <b>{e(row.get('parent_run_id'))}</b>")
        lines += [f"{html.escape(k[len(FINETUNE_PREFIX):])} {e(row.get(k))}" for k in row.get("_grid", ())]
    return "<br>".join(lines)


def _points(done: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The runs a view draws: finite positive x (log axes) and finite y."""
    xs = pd.to_numeric(done[x], errors="coerce") if x in done.columns else pd.Series(np.nan, index=done.index)
    ys = pd.to_numeric(done[y], errors="coerce") if y in done.columns else pd.Series(np.nan, index=done.index)
    ok = np.isfinite(xs) & (xs > 0) & np.isfinite(ys)
    return done.assign(_x=xs, _y=100 * ys)[ok]


def _run_trace(sub: pd.DataFrame, name: str, color: str, symbol: str, group: str, model: str | None = None) -> go.Scatter:
    return go.Scatter(x=sub["_x"].tolist(), y=sub["_y"].tolist(), mode="markers", name=name, legendgroup=group,
                      marker=dict(color=color, symbol=symbol, size=8, opacity=0.8, line=dict(width=0.5, color="white")),
                      customdata=sub["_idx"].tolist(), text=sub["_hover"].tolist(),
                      hovertemplate="%{text}<extra></extra>", meta={"role": "runs", "model": model})


def _pareto_view(points: pd.DataFrame, title: str, xlabel: str, ylabel: str, better: str) -> go.Figure:
    from .figures import family_of, family_styles

    fig = go.Figure()
    fams = points["family"].map(family_of)
    for fam, (color, marker, name, _) in family_styles(fams).items():
        sub = points[fams == fam]
        if not sub.empty:
            fig.add_trace(_run_trace(sub, name, color, _SYMBOLS.get(marker, "circle"), fam))
    # filled in by the page (frontier of the runs shown), so it follows the filters
    fig.add_trace(go.Scatter(x=[], y=[], mode="lines+markers", name="Pareto frontier",
                             line=dict(color="black", width=1.5), hoverinfo="skip",
                             marker=dict(size=12, color="rgba(0,0,0,0)", line=dict(width=1.5, color="black")),
                             meta={"role": "frontier", "better": better}))
    fig.update_layout(title=title, xaxis=dict(title=xlabel, type="log"), yaxis=dict(title=ylabel),
                      template="plotly_white", height=460, margin=dict(l=60, r=20, t=50, b=50))
    return fig


_SYMBOLS = {"o": "circle", "s": "square", "^": "triangle-up", "D": "diamond", "v": "triangle-down", "P": "cross",
            "X": "x", "h": "hexagon", "*": "star", "p": "pentagon", "<": "triangle-left", ">": "triangle-right"}


def _scaling_view(points: pd.DataFrame, title: str, xlabel: str, ylabel: str) -> go.Figure:
    from .figures import family_of, family_styles

    fig = go.Figure()
    fams = points["family"].map(family_of)
    for fam, (_, marker, _, cmap_name) in family_styles(fams).items():
        models = sorted(points.loc[fams == fam, "model"].astype(str).unique())
        for i, model in enumerate(models):
            color = colors.to_hex(colormaps[cmap_name](0.5 + 0.45 * i / max(len(models) - 1, 1)))
            sub = points[(fams == fam) & (points["model"].astype(str) == model)]
            fig.add_trace(_run_trace(sub, model, color, _SYMBOLS.get(marker, "circle"), model, model))
            fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=f"{model} (mean over seeds)", legendgroup=model,
                                     showlegend=False, hoverinfo="skip",
                                     line=dict(color=color, width=2, dash="solid" if fam == "mixer" else "dash"),
                                     meta={"role": "mean", "model": model}))
    fig.update_layout(title=title, xaxis=dict(title=xlabel, type="log"), yaxis=dict(title=ylabel),
                      template="plotly_white", height=460, margin=dict(l=60, r=20, t=50, b=50))
    return fig


def _table_html(table: pd.DataFrame) -> str:
    cols = [c for c in TABLE_COLUMNS if c in table.columns] + fewshot_columns(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for pos, (_, row) in enumerate(table[cols].iterrows()):
        cells = "".join(f"<td>{html.escape(_text(row[c]))}</td>" for c in cols)
        body.append(f'<tr data-idx="{pos}">{cells}</tr>')
    return f'<table id="results"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _json(obj: Any) -> str:
    """JSON (or JSON text) safe inside a <script> element: no "</" can end it early."""
    text = obj if isinstance(obj, str) else json.dumps(obj, allow_nan=False)
    return text.replace("</", "<\\/")


def dashboard_html(st, table: pd.DataFrame, *, title: str = "Scaling study",
                   finetunes: pd.DataFrame | None = None) -> str:
    """The dashboard of study ``st`` (:func:`mixer_scaling.analysis.figures.study`) as one self-contained
    HTML page. ``table`` is the cleaned results table the study was computed from
    (:func:`~mixer_scaling.analysis.results.clean_table` of its input: ``st.done`` holds its finished rows,
    by index); the page's table lists all its runs, the plots its finished ones. ``finetunes``
    (:func:`~mixer_scaling.analysis.results.collect_finetunes`): its finished rows make the fine-tuned view."""
    from .figures import COMPUTE_AXES, finetune_grid_keys

    if not st.done.index.isin(table.index).all():
        raise ValueError("dashboard_html: table is not the cleaned table the study was computed from")
    done = st.done.copy()
    done["_idx"] = [table.index.get_loc(i) for i in done.index]  # its row in the table: filter values, table row
    metrics = [(st.pareto_metric.column, st.pareto_metric.label.replace(" (%)", ""))]
    if st.scaling_metric.column != st.pareto_metric.column:
        metrics.append((st.scaling_metric.column, st.scaling_metric.label.replace(" (%)", "")))
    if "select_top1" not in (m for m, _ in metrics):
        metrics.append(("select_top1", "select top-1"))
    done["_hover"] = [_hover(r, metrics) for _, r in done.iterrows()]

    compute_col = COMPUTE_AXES[st.compute][0]
    views = [
        ("accuracy vs pre-training compute", _pareto_view(
            _points(done, compute_col, st.pareto_metric.column), "accuracy vs pre-training compute",
            st.compute_label, st.pareto_metric.label, "lower")),
        ("accuracy vs throughput", _pareto_view(
            _points(done, "throughput", st.pareto_metric.column), "accuracy vs inference throughput",
            st.throughput_label, st.pareto_metric.label, "higher")),
        ("data scaling", _scaling_view(
            _points(done, st.x_col, st.scaling_metric.column), "data scaling", st.x_label, st.scaling_metric.label)),
    ]
    runs = [_filter_values(row) for _, row in table.iterrows()]
    ft_done = (finetunes[finetunes["status"] == "done"] if finetunes is not None and "status" in finetunes.columns
               else pd.DataFrame())
    if not ft_done.empty:
        # each fine-tune gets its own entry after the table's runs, with its parent's family, size and
        # fraction, so the same check boxes filter it
        grid = finetune_grid_keys(ft_done)
        ft = ft_done.assign(_idx=range(len(runs), len(runs) + len(ft_done)), _grid=[grid] * len(ft_done))
        ft["_hover"] = [_hover(r, [("val_top1", "top-1 after fine-tuning"), ("select_top1", "select top-1")])
                        for _, r in ft.iterrows()]
        runs += [_filter_values(row) for _, row in ft.iterrows()]
        views.append(("fine-tuned accuracy vs pre-training compute", _pareto_view(
            _points(ft, compute_col, "val_top1"), "fine-tuned accuracy vs pre-training compute",
            f"parent's {st.compute_label}", "top-1 after fine-tuning (%)", "lower")))
    options = {key: sorted({r[key] for r in runs}, key=lambda v: (_finite(v) is None, _finite(v) or 0, v))
               for key in FILTERS}
    filters = "".join(
        f'<fieldset class="filter" data-key="{key}"><legend>{key}</legend>'
        + "".join(f'<label><input type="checkbox" value="{html.escape(v)}" checked> {html.escape(v or "(none)")}</label>'
                  for v in options[key])
        + "</fieldset>" for key in FILTERS)
    figs = "[" + ",".join(pio.to_json(fig, validate=True) for _, fig in views) + "]"
    divs = "".join(f'<section><div class="view" id="view{i}" data-title="{html.escape(name)}"></div></section>'
                   for i, (name, _) in enumerate(views))
    n_done = len(done)
    return _PAGE.format(
        title=html.escape(title), plotly=get_plotlyjs(), figs=_json(figs), runs=_json(runs),
        filters=filters, views=divs, table=_table_html(table), n_runs=len(table), n_done=n_done,
        metric=html.escape(st.pareto_metric.column), scaling=html.escape(st.scaling_metric.column),
        finetuned=(f" The fine-tuned view draws {len(ft_done)} finished fine-tunes at their parent's pre-training "
                   "compute, every setting of the fine-tuning grid (the PNG figure keeps the setting best on "
                   "<code>select_top1</code>).") if not ft_done.empty else "",
    )


def write_dashboard(path: str | Path, st, table: pd.DataFrame, *, title: str = "Scaling study",
                    finetunes: pd.DataFrame | None = None) -> Path:
    """Write :func:`dashboard_html` to ``path`` atomically (a fsynced temp file renamed over it), readable
    as any file this process creates (the umask's mode, not the temp file's private 0600)."""
    path = Path(path)
    tmp = write_temp(path, dashboard_html(st, table, title=title, finetunes=finetunes).encode("utf-8"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a page to share, like the figures beside it
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.filters {{ display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }}
fieldset.filter {{ border: 1px solid #ccc; border-radius: 4px; }}
fieldset.filter label {{ margin-right: 0.8em; white-space: nowrap; }}
.views {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1em; }}
table {{ border-collapse: collapse; font-size: 12px; margin-top: 1em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; }}
th {{ position: sticky; top: 0; background: #f5f5f5; }}
#shown {{ margin: 0.5em 0; }}
div.table {{ overflow-x: auto; max-width: 100%; }}
</style>
<script>{plotly}</script>
</head><body>
<h1>{title}</h1>
<p>{n_runs} runs, {n_done} finished and drawn. Pareto views: <code>{metric}</code>; data scaling:
<code>{scaling}</code>. One point per run (hover for its id, model, fraction, seed and metrics); the frontier
is that of the runs shown, the data-scaling lines the mean over the seeds shown.{finetuned}</p>
<div class="filters">{filters}</div>
<p id="shown"></p>
<div class="views">{views}</div>
<h2>Results table</h2>
<div class="table">{table}</div>
<script>
"use strict";
const FIGS = {figs};
const RUNS = {runs};
// the traces and layouts as written: every redraw starts from them (Plotly.react mutates what it is given)
const ORIG = FIGS.map(f => JSON.stringify(f.data));
const LAYOUTS = FIGS.map(f => JSON.stringify(f.layout));

function frontier(xs, ys, better) {{
  // figures.pareto_mask: no other point has a better-or-equal x and a higher-or-equal y
  const idx = xs.map((_, i) => i);
  const key = i => better === "lower" ? xs[i] : -xs[i];
  idx.sort((a, b) => key(a) - key(b) || ys[b] - ys[a]);
  const out = []; let best = -Infinity;
  for (const i of idx) {{ if (ys[i] > best) {{ out.push(i); best = ys[i]; }} }}
  return out;
}}

function selected() {{
  const sel = {{}};
  document.querySelectorAll("fieldset.filter").forEach(fs => {{
    sel[fs.dataset.key] = new Set(Array.from(fs.querySelectorAll("input:checked")).map(b => b.value));
  }});
  return RUNS.map(r => Object.keys(sel).every(k => sel[k].has(r[k])));
}}

function derive(data, ok) {{
  const runs = data.filter(t => t.meta && t.meta.role === "runs");
  for (const t of runs) {{
    const keep = t.customdata.map((c, i) => ok[c] ? i : -1).filter(i => i >= 0);
    for (const k of ["x", "y", "customdata", "text"]) t[k] = keep.map(i => t[k][i]);
  }}
  for (const t of data) {{
    if (!t.meta) continue;
    if (t.meta.role === "frontier") {{
      const xs = [].concat(...runs.map(r => r.x)), ys = [].concat(...runs.map(r => r.y));
      const f = frontier(xs, ys, t.meta.better).sort((a, b) => xs[a] - xs[b]);
      t.x = f.map(i => xs[i]); t.y = f.map(i => ys[i]);
    }} else if (t.meta.role === "mean") {{
      const by = new Map();
      for (const r of runs.filter(r => r.meta.model === t.meta.model))
        r.x.forEach((x, i) => {{ const s = by.get(x) || [0, 0]; s[0] += r.y[i]; s[1] += 1; by.set(x, s); }});
      const xs = Array.from(by.keys()).sort((a, b) => a - b);
      t.x = xs; t.y = xs.map(x => by.get(x)[0] / by.get(x)[1]);
    }}
  }}
  return data;
}}

function apply() {{
  const ok = selected();
  const gds = document.querySelectorAll(".view");
  let shown = 0;
  gds.forEach((gd, v) => {{
    const data = derive(JSON.parse(ORIG[v]), ok);
    Plotly.react(gd, data, JSON.parse(LAYOUTS[v]), {{displaylogo: false, responsive: true}});
  }});
  document.querySelectorAll("#results tbody tr").forEach(tr => {{
    const on = ok[Number(tr.dataset.idx)];
    tr.style.display = on ? "" : "none";
    shown += on ? 1 : 0;
  }});
  document.getElementById("shown").textContent = shown + " of {n_runs} runs shown";
}}

document.querySelectorAll("fieldset.filter input").forEach(b => b.addEventListener("change", apply));
apply();
</script>
</body></html>
"""

__all__ = ["DASHBOARD_FILE", "FILTERS", "TABLE_COLUMNS", "dashboard_html", "write_dashboard"]
