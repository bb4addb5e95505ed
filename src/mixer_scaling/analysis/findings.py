"""The study's answers, stated with their uncertainty: ``findings.md`` (for a researcher) and
``findings.json`` (numbers, for a program), written by ``figures`` beside the figures.

Inputs: the data-scaling runs (one row per run of the kept configurations: ``family``, ``model``,
``size``, ``line``, ``x`` the pre-training set size, ``y`` the reported accuracy), the per-line
power-law fits of the figure, and the Pareto points of the compute and throughput figures.

Uncertainty is a percentile bootstrap over seeds: the runs of each (line, data size) cell are
resampled with replacement (``n_boot`` times, a fixed seed), and every statistic — a mean, a gain,
a gap, a family's best model — is recomputed from the resampled cell means. A statistic gets an
interval only when every cell it uses has at least 2 seeds; otherwise it is reported without one
and any conclusion drawn from it is "cannot be concluded". Exponent intervals are those of the
fits (:mod:`.fits`); a difference of exponents uses the differences of the two fits' bootstrap
refits. Exponents and crossovers need at least :data:`MIN_SIZES` data sizes (three parameters).

What is stated (keys of ``findings.json``):

* ``data_scaling``: per line, the gain in accuracy from its smallest to its largest data size, and
  the fitted exponent ``b`` of ``err = a·n^(-b) + c`` (or why there is none);
* ``gaps``: Mixer − BiT, Mixer − ViT (and ViT − BiT) at the smallest and the largest size, for
  each pair of models with the same size label (``mixer/tiny`` vs ``bit/tiny``) and for the two
  families' best models at that size, with whether the interval excludes 0; any other family in
  the table (a timm family, e.g. ``convnext``) is compared the same way with each of Mixer, ViT
  and BiT, and with each other such family (:func:`family_pairs`);
* ``ordering``: whether each of those orderings flips between the smallest and the largest size;
* ``crossovers``: where the fitted curves cross (same-size pairs, and the families' envelopes:
  the best fitted accuracy of a family at each size), within the measured range, or beyond it up
  to :data:`EXTRAPOLATE` × the largest size (labelled extrapolated), or not at all;
* ``frontiers``: which families hold the compute and throughput frontiers and over which range;
* ``paper_findings``: the paper's three findings, each "holds", "does not hold" or "cannot be
  concluded", with the numbers behind it (about Mixer, ViT and BiT only: other families enter
  them only through the compute frontier, which any family may hold);
* ``limitations``: what the data cannot tell (too few sizes, one seed, no bootstrap, a family missing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..models.families import display_name, styles
from .fits import PowerLawFit

#: The paper's families, whose names its findings use; any other family is named by :func:`display_name`.
FAMILY_NAMES = {"mixer": "Mixer", "vit": "ViT", "bit": "BiT"}
#: (a, b): gaps are a − b. Mixer against both baselines, and ViT against BiT for the paper's claims.
PAIRS = (("mixer", "bit"), ("mixer", "vit"), ("vit", "bit"))


def family_pairs(families: Sequence[str]) -> list[tuple[str, str]]:
    """The (a, b) family pairs compared (gaps a − b, orderings, crossovers) among ``families``: :data:`PAIRS`,
    then each other family against Mixer, ViT and BiT, then the other families against each other (in
    :func:`order_families` order)."""
    present = set(families)
    extra = [f for f in order_families(present) if f not in FAMILY_NAMES]
    out = [p for p in PAIRS if set(p) <= present]
    out += [(e, f) for e in extra for f in FAMILY_NAMES if f in present]
    out += [(a, b) for i, a in enumerate(extra) for b in extra[i + 1:]]
    return out


def order_families(families) -> list[str]:
    """``families`` in drawing order: registered ones in table order, other labels sorted, ``other`` last."""
    return [f for f in styles(families) if f in set(families)]
MIN_SIZES = 4
EXTRAPOLATE = 10.0
HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "cannot be concluded"
MD_FILE, JSON_FILE = "findings.md", "findings.json"
_GRID = 600


# ----------------------------------------------------------------------------------------------
# Bootstrapped statistics


@dataclass
class _Stat:
    """A statistic, its bootstrap replicates (None: no interval), and why there is no interval."""

    value: float
    samples: np.ndarray | None
    why: str = ""

    def __sub__(self, other: "_Stat") -> "_Stat":
        both = self.samples is not None and other.samples is not None
        return _Stat(self.value - other.value, self.samples - other.samples if both else None,
                     self.why or other.why)

    def ci(self, level: float) -> list[float] | None:
        if self.samples is None or not np.isfinite(self.samples).any():
            return None
        lo, hi = np.nanpercentile(self.samples, [50 * (1 - level), 50 * (1 + level)])
        return [float(lo), float(hi)]

    def sign(self, level: float) -> int | None:
        """+1 / −1 when the interval lies above / below 0, 0 when it holds 0, None without one."""
        ci = self.ci(level)
        if ci is None:
            return None
        return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


class _Cells:
    """The runs of each (line, size) cell, their means and bootstrap means."""

    def __init__(self, runs: pd.DataFrame, n_boot: int, seed: int):
        self.n_boot = n_boot
        rng = np.random.default_rng(seed)
        self.obs: dict[tuple[str, float], np.ndarray] = {}
        self.boot: dict[tuple[str, float], np.ndarray] = {}
        for (line, x), sub in runs.groupby(["line", "x"], sort=True):
            y = sub["y"].to_numpy(dtype=float)
            self.obs[(line, float(x))] = y
            if n_boot > 0:
                self.boot[(line, float(x))] = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1)
        first = runs.groupby("line", sort=True).first()
        order = {f: i for i, f in enumerate(order_families(set(first["family"].astype(str))))}
        first = first.iloc[sorted(range(len(first)), key=lambda i: (order.get(first["family"].iloc[i], len(order)),
                                                                     first.index[i]))]
        self.lines = {line: {"family": str(r["family"]), "model": str(r["model"]),
                             "size": None if pd.isna(r.get("size")) else str(r["size"])}
                      for line, r in first.iterrows()}
        self.sizes = sorted(float(x) for x in runs["x"].unique())

    def sizes_of(self, line: str) -> list[float]:
        return sorted(x for (ln, x) in self.obs if ln == line)

    def of_family(self, family: str) -> list[str]:
        return [ln for ln, meta in self.lines.items() if meta["family"] == family]

    def n(self, line: str, x: float) -> int:
        return len(self.obs[(line, x)])

    def mean(self, line: str, x: float) -> _Stat:
        key = (line, x)
        if self.n_boot <= 0:
            return _Stat(float(self.obs[key].mean()), None, "no bootstrap (n_boot=0)")
        if len(self.obs[key]) < 2:
            return _Stat(float(self.obs[key].mean()), None, f"1 seed for {line} at {_num(x)}")
        return _Stat(float(self.obs[key].mean()), self.boot[key])

    def best(self, family: str, x: float) -> tuple[_Stat, str] | None:
        """The family's best line at ``x`` by mean; its replicates take the best in each resample."""
        lines = [ln for ln in self.of_family(family) if (ln, x) in self.obs]
        if not lines:
            return None
        stats = [self.mean(ln, x) for ln in lines]
        i = int(np.argmax([s.value for s in stats]))
        missing = [s.why for s in stats if s.samples is None]
        samples = None if missing else np.max(np.stack([s.samples for s in stats]), axis=0)
        return _Stat(stats[i].value, samples, missing[0] if missing else ""), lines[i]


def _exponent_difference(fa: PowerLawFit, fb: PowerLawFit) -> _Stat:
    n = min(len(fa.samples), len(fb.samples))
    samples = fa.samples[:n, 1] - fb.samples[:n, 1] if n else None
    return _Stat(fa.b - fb.b, samples, "" if n else "no bootstrap of the fits")


# ----------------------------------------------------------------------------------------------
# Crossovers of fitted curves


def _envelope(fits: Sequence[PowerLawFit], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The lowest fitted error of ``fits`` at each grid point, and the same for their bootstrap refits."""
    point = np.min([f.predict(grid) for f in fits], axis=0)
    n = min(len(f.samples) for f in fits)
    if n == 0:
        return point, None
    u = grid[None, :]
    curves = [np.exp(f.samples[:n, :1]) * (u / f.x_ref) ** (-f.samples[:n, 1:2]) + f.samples[:n, 2:3] for f in fits]
    return point, np.min(curves, axis=0)


def _crossings(d: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``d`` (err_a − err_b on ``grid``): the first x where the sign changes (log-linear
    interpolation; NaN if none), the sign before it, and how many sign changes there are."""
    d = np.atleast_2d(d)
    change = np.sign(d[:, :-1]) * np.sign(d[:, 1:]) < 0
    count = change.sum(axis=1)
    i = np.argmax(change, axis=1)
    rows = np.arange(len(d))
    d0, d1 = d[rows, i], d[rows, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(count > 0, d0 / (d0 - d1), 0.0)
    lg = np.log(grid)
    x = np.exp(lg[i] + t * (lg[i + 1] - lg[i]))
    return np.where(count > 0, x, np.nan), np.sign(d0), count


def _crossover(name_a: str, name_b: str, fits_a: Sequence[PowerLawFit], fits_b: Sequence[PowerLawFit],
               lo: float, hi: float, sizes: int, level: float) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "undetermined", "crossing_x": None, "extrapolated": None, "direction": None,
                           "n_crossings": None, "bootstrap_share": None, "crossing_x_ci": None, "range": [lo, hi],
                           "note": None}
    if sizes < MIN_SIZES:
        out["note"] = (f"{sizes} data size{'s' if sizes != 1 else ''}: a 3-parameter curve needs at least "
                       f"{MIN_SIZES} to place a crossover")
        return out
    if not fits_a or not fits_b:
        missing = name_a if not fits_a else name_b
        out["note"] = f"no fitted curve for {missing}"
        return out
    grid = np.geomspace(lo, hi * EXTRAPOLATE, _GRID)
    pa, sa = _envelope(fits_a, grid)
    pb, sb = _envelope(fits_b, grid)
    x, before, count = (v[0] for v in _crossings(pa - pb, grid))
    out["n_crossings"] = int(count)
    if np.isfinite(x):
        out.update(status="within" if x <= hi else "extrapolated", crossing_x=float(x), extrapolated=bool(x > hi),
                   direction=f"{name_a} overtakes {name_b}" if before > 0 else f"{name_b} overtakes {name_a}")
    else:
        out["status"] = "none"
    if sa is not None and sb is not None:
        n = min(len(sa), len(sb))
        xs, _, _ = _crossings(sa[:n] - sb[:n], grid)
        out["bootstrap_share"] = float(np.isfinite(xs).mean())
        if np.isfinite(xs).any():
            out["crossing_x_ci"] = [float(v) for v in np.nanpercentile(xs, [50 * (1 - level), 50 * (1 + level)])]
    return out


def _crossover_statement(c: dict[str, Any], what: str) -> str:
    if c["status"] == "undetermined":
        return f"{what}: cannot be concluded ({c['note']})"
    if c["status"] == "none":
        return (f"{what}: no crossover within the measured range ({_num(c['range'][0])}–{_num(c['range'][1])}) "
                f"nor up to {EXTRAPOLATE:g}x beyond it")
    where = ("within the measured range" if c["status"] == "within"
             else f"beyond the measured range (extrapolated, up to {EXTRAPOLATE:g}x the largest size)")
    share = (f"; {100 * c['bootstrap_share']:.0f}% of bootstrap refits cross" if c["bootstrap_share"] is not None
             else "")
    more = f"; the curves cross {c['n_crossings']} times" if c["n_crossings"] and c["n_crossings"] > 1 else ""
    return f"{what}: {c['direction']} at {_num(c['crossing_x'])}, {where}{share}{more}"


# ----------------------------------------------------------------------------------------------
# Frontiers


def _frontier(pts: pd.DataFrame | None, runs: pd.DataFrame | None, x_better: str, n_boot: int, seed: int,
              metric: str | None, axis: str) -> dict[str, Any] | None:
    if pts is None or pts.empty:
        return None
    from .figures import pareto_mask  # figures imports this module

    front = pts[pts["on_frontier"]]
    families = {}
    for fam in order_families(set(pts["family"].astype(str))):
        on = front[front["family"] == fam].sort_values("x")
        families[fam] = {"points": int((pts["family"] == fam).sum()), "on_frontier": int(len(on)),
                         "x_min": float(on["x"].min()) if len(on) else None,
                         "x_max": float(on["x"].max()) if len(on) else None, "labels": [str(v) for v in on["label"]]}
    out: dict[str, Any] = {"metric": metric, "axis": axis, "x_better": x_better, "n_points": int(len(pts)),
                           "holders": [f for f, v in families.items() if v["on_frontier"]], "families": families,
                           "bootstrap_share": None, "bootstrap_note": None}
    if runs is None:
        return out
    if n_boot <= 0:
        out["bootstrap_note"] = "no bootstrap (n_boot=0)"
        return out
    if int(pts["n_seeds"].min()) < 2:
        out["bootstrap_note"] = "some configurations have 1 seed: frontier membership not tested against seed noise"
        return out
    rng = np.random.default_rng(seed)
    by_config = {cid: g["_y"].to_numpy(float) for cid, g in runs.groupby("config_id")}
    means = np.empty((n_boot, len(pts)))
    for j, cid in enumerate(pts["config_id"]):
        y = by_config[cid]
        means[:, j] = y[rng.integers(0, len(y), size=(n_boot, len(y)))].mean(axis=1)
    fam = pts["family"].to_numpy()
    x = pts["x"].to_numpy(float)
    hits = {f: 0 for f in families}
    for row in means:
        mask = pareto_mask(x, row, x_better)
        for f in families:
            hits[f] += bool((mask & (fam == f)).any())
    out["bootstrap_share"] = {f: hits[f] / n_boot for f in families}
    return out


# ----------------------------------------------------------------------------------------------
# The findings


@dataclass
class Findings:
    """The study's answers: :attr:`data` is ``findings.json``; :meth:`markdown` is ``findings.md``."""

    data: dict[str, Any] = field(default_factory=dict)

    def add_frontier(self, name: str, pts: pd.DataFrame | None, runs: pd.DataFrame | None, x_better: str,
                     n_boot: int, seed: int, metric: str, axis: str) -> None:
        """Add one more frontier (e.g. fine-tuned accuracy against the parents' compute) to ``frontiers``:
        who holds it, over which range, and how often under the bootstrap over seeds."""
        entry = _frontier(pts, runs, x_better, n_boot, seed, metric, axis)
        if entry is not None:
            self.data["frontiers"][name] = entry

    def short(self) -> list[str]:
        """A few lines for the figures summary: the paper's findings and the family crossovers."""
        d = self.data
        seeds = d["seeds_per_cell"]
        seeds_text = f"{seeds['min']} seed{'s' if seeds['min'] != 1 else ''}" if seeds["min"] == seeds["max"] \
            else f"{seeds['min']}-{seeds['max']} seeds"
        sizes = f"{d['n_sizes']} size{'s' if d['n_sizes'] != 1 else ''}"
        lines = [f"findings ({d['metric']} vs {d['x']}; {sizes}, {seeds_text} per cell; "
                 f"details in {MD_FILE}):"]
        for f in d["paper_findings"]:
            lines.append(f"  ({f['id']}) {f['claim']}: {f['verdict']} — {f['why']}")
        for c in d["crossovers"]:
            if c["kind"] == "family_best" and c["families"][0] == "mixer":
                lines.append(f"  {c['statement']}")
        lines += [f"  cannot be concluded: {text}" for text in d["limitations"]]
        return lines

    def markdown(self) -> str:
        d, level = self.data, self.data["level"]
        pct = f"{100 * level:g}%"
        out = [
            "# Findings",
            "",
            f"Reported metric: `{d['metric']}` against pre-training set size (`{d['x']}`): sizes "
            f"{', '.join(_num(x) for x in d['sizes'])}. Points: {d['aggregation']}. Intervals: {pct} percentile "
            f"bootstrap over seeds ({d['n_boot']} resamples of the runs in each model × size cell, seed "
            f"{d['bootstrap_seed']}). Accuracies and gaps in percentage points (pts).",
            "",
        ]
        if d["limitations"]:
            out += ["## What cannot be concluded", ""] + [f"* {t}" for t in d["limitations"]] + [""]
        out += ["## The paper's findings", "", "| | claim | verdict | why |", "|---|---|---|---|"]
        out += [f"| {f['id']} | {f['claim']} | **{f['verdict']}** | {f['why']} |" for f in d["paper_findings"]]
        out += ["", "## Data scaling per model", "",
                f"| model | sizes | smallest → largest | gain [{pct}] | exponent b [{pct}] |",
                "|---|---|---|---|---|"]
        for m in d["data_scaling"]:
            gain = (f"{_pts(m['gain'], sign=True)} {_ci(m['gain_ci'])}" if m["gain"] is not None else "—")
            e = m["exponent"]
            b = (f"{e['b']:.3f} {_ci(e['b_ci'], scale=1, digits=3, sign=False)}" if e else "—") + \
                (f" ({m['exponent_note']})" if m["exponent_note"] else "")
            span = (f"{_pts(m['mean_smallest'])} → {_pts(m['mean_largest'])}" if m["gain"] is not None
                    else _pts(m["mean_smallest"]))
            out.append(f"| {m['line']} | {len(m['sizes'])} | {span} | {gain} | {b} |")
        out += ["", "## Gaps", "", f"| comparison | at | size | gap [{pct}] | interval excludes 0 |",
                "|---|---|---|---|---|"]
        for g in d["gaps"]:
            ex = "—" if g["ci_excludes_0"] is None else ("yes" if g["ci_excludes_0"] else "no")
            why = f" ({g['note']})" if g["note"] else ""
            gap = " ".join(filter(None, [_pts(g["gap"], sign=True), _ci(g["ci"])]))
            out.append(f"| {g['a']} − {g['b']} ({_kind(g['kind'])}) | {g['subset']} | {_num(g['x'])} | "
                       f"{gap}{why} | {ex} |")
        out += ["", "## Does the ordering flip between the smallest and the largest size?", ""]
        out += [f"* {o['statement']}" for o in d["ordering"]] or ["* no pair measured at both sizes"]
        out += ["", "## Crossovers of the fitted curves", ""]
        out += [f"* {c['statement']}" for c in d["crossovers"]] or ["* no pair of families to compare"]
        out += ["", "## Frontiers", ""]
        for name, fr in d["frontiers"].items():
            if fr is None:
                continue
            out.append(f"* **{name}** ({fr['metric']} vs {fr['axis']}): held by "
                       f"{', '.join(display_name(f) for f in fr['holders']) or 'nobody'}")
            for fam, v in fr["families"].items():
                if v["on_frontier"]:
                    share = fr["bootstrap_share"]
                    share = f"; on it in {100 * share[fam]:.0f}% of bootstrap resamples" if share else ""
                    out.append(f"  * {display_name(fam)}: {v['on_frontier']} of {v['points']} points, "
                               f"{fr['axis']} {_span(v['x_min'], v['x_max'])} ({', '.join(v['labels'])}){share}")
                else:
                    out.append(f"  * {display_name(fam)}: none of {v['points']} points")
            if fr["bootstrap_note"]:
                out.append(f"  * {fr['bootstrap_note']}")
        return "\n".join(out) + "\n"

    def write(self, folder: str | Path) -> list[str]:
        """Write ``findings.md`` and ``findings.json`` into ``folder``; returns their names."""
        folder = Path(folder)
        (folder / MD_FILE).write_text(self.markdown())
        (folder / JSON_FILE).write_text(json.dumps(_clean(self.data), indent=2, allow_nan=False) + "\n")
        return [MD_FILE, JSON_FILE]


def study_findings(runs: pd.DataFrame, fits: Mapping[str, PowerLawFit], *, metric: str, x: str,
                   compute: pd.DataFrame | None = None, compute_runs: pd.DataFrame | None = None,
                   throughput: pd.DataFrame | None = None, pareto_metric: str | None = None,
                   compute_axis: str = "pretrain_flops", aggregation: str = "", n_boot: int = 200,
                   level: float = 0.95, seed: int = 0) -> Findings:
    """The findings (module docstring) from the data-scaling ``runs`` (columns ``family``, ``model``,
    ``size``, ``line``, ``x``, ``y``), their per-line ``fits``, and the Pareto points of the compute
    (with ``compute_runs``: ``config_id``, ``_y``, for the frontier bootstrap) and throughput figures."""
    cells = _Cells(runs, n_boot, seed)
    sizes = cells.sizes
    counts = [len(v) for v in cells.obs.values()]
    families = order_families({m["family"] for m in cells.lines.values()})
    data: dict[str, Any] = {
        "metric": metric, "x": x, "sizes": sizes, "n_sizes": len(sizes),
        "seeds_per_cell": {"min": min(counts), "max": max(counts)}, "level": level, "n_boot": n_boot,
        "bootstrap_seed": seed, "aggregation": aggregation, "families": families,
    }
    data["limitations"] = _limitations(cells, families, n_boot, compute)
    data["data_scaling"] = [_line_entry(cells, line, fits.get(line), level) for line in cells.lines]
    gaps, stats = _gaps(cells, level)
    data["gaps"] = gaps
    data["ordering"] = _ordering(gaps, stats, level)
    data["crossovers"] = _all_crossovers(cells, fits, level)
    data["frontiers"] = {
        "compute": _frontier(compute, compute_runs, "lower", n_boot, seed, pareto_metric, compute_axis),
        "throughput": _frontier(throughput, None, "higher", n_boot, seed, pareto_metric, "throughput"),
    }
    data["paper_findings"] = [_claim_small_subset(cells, level), _claim_gains(cells, fits, level),
                              _claim_frontier(data["frontiers"]["compute"], level)]
    return Findings(data)


def _limitations(cells: _Cells, families: list[str], n_boot: int, compute: pd.DataFrame | None) -> list[str]:
    out = []
    n = len(cells.sizes)
    if n < MIN_SIZES:
        out.append(f"{n} data size{'s' if n != 1 else ''} (fewer than {MIN_SIZES}): a curve err = a·n^(-b) + c has "
                   f"3 parameters, so exponents and where curves cross are not determined")
    ones = [key for key, y in cells.obs.items() if len(y) < 2]
    if len(ones) == len(cells.obs):
        out.append("1 seed: no confidence interval; gains and gaps are not distinguishable from seed noise")
    elif ones:
        out.append(f"{len(ones)} of {len(cells.obs)} model × size cells have 1 seed: comparisons using them have "
                   f"no interval")
    few = [key for key, y in cells.obs.items() if 2 <= len(y) < 3]
    if few:
        # resampling 2 seeds gives 3 distinct means: the percentile interval understates seed noise
        out.append(f"{len(few)} of {len(cells.obs)} model × size cells have 2 seeds: bootstrap intervals over 2 seeds "
                   f"are narrower than the seed noise they stand for; read them as the seed range, and use 3 or "
                   f"more seeds (e.g. seed=0,1,2) before relying on an interval that barely excludes 0")
    if n_boot <= 0:
        out.append("no bootstrap (n_boot=0): no confidence intervals")
    for fam in FAMILY_NAMES:
        if fam not in families:
            out.append(f"no {FAMILY_NAMES[fam]} runs: comparisons with {FAMILY_NAMES[fam]} cannot be made")
    if compute is not None and len(compute) and int(compute["n_seeds"].min()) < 2:
        out.append("1 seed for some Pareto points: frontier membership is not tested against seed noise")
    return out


def _line_entry(cells: _Cells, line: str, fit: PowerLawFit | None, level: float) -> dict[str, Any]:
    meta = cells.lines[line]
    xs = cells.sizes_of(line)
    small, large = cells.mean(line, xs[0]), cells.mean(line, xs[-1])
    entry: dict[str, Any] = {
        "line": line, **meta, "sizes": xs, "x_smallest": xs[0], "x_largest": xs[-1],
        "mean_smallest": small.value, "mean_largest": large.value,
        "n_seeds_smallest": cells.n(line, xs[0]), "n_seeds_largest": cells.n(line, xs[-1]),
        "gain": None, "gain_ci": None, "gain_ci_excludes_0": None, "gain_note": None,
        "exponent": None, "exponent_note": None,
    }
    if len(xs) > 1:
        gain = large - small
        ci = gain.ci(level)
        entry.update(gain=gain.value, gain_ci=ci, gain_ci_excludes_0=None if ci is None else bool(gain.sign(level)),
                     gain_note=gain.why or None)
    else:
        entry["gain_note"] = "one size only"
    if fit is not None:
        ci = fit.ci["b"]
        entry["exponent"] = {"b": fit.b, "b_ci": list(ci) if np.isfinite(ci[0]) else None, "a": fit.a, "c": fit.c,
                             "bootstrap": fit.method, "n_sizes": fit.n_groups}
        if fit.n_groups < MIN_SIZES:
            entry["exponent_note"] = (f"{fit.n_groups} sizes for 3 parameters: not conclusive")
        elif fit.method == "residual":
            entry["exponent_note"] = "1 seed per size: interval from the fit's residuals, not from seed noise"
    else:
        entry["exponent_note"] = ("one size only" if len(xs) == 1 else
                                  f"{len(xs)} sizes: a fit needs at least 4 (or 3 with repeated seeds)"
                                  if len(xs) < 4 else "the fit did not converge")
    return entry


def _gaps(cells: _Cells, level: float) -> tuple[list[dict[str, Any]], dict[tuple, _Stat]]:
    gaps, stats = [], {}
    where = {"smallest": cells.sizes[0], "largest": cells.sizes[-1]} if len(cells.sizes) > 1 else \
        {"smallest": cells.sizes[0]}
    for fa, fb in family_pairs([m["family"] for m in cells.lines.values()]):
        la, lb = cells.of_family(fa), cells.of_family(fb)
        if not la or not lb:
            continue
        for subset, x in where.items():
            pairs = [(a, b) for a in la for b in lb
                     if cells.lines[a]["size"] is not None and cells.lines[a]["size"] == cells.lines[b]["size"]
                     and (a, x) in cells.obs and (b, x) in cells.obs]
            for a, b in pairs:
                stat = cells.mean(a, x) - cells.mean(b, x)
                gaps.append(_gap_entry(fa, fb, "same_size", subset, x, a, b, stat, level))
                stats[(fa, fb, "same_size", a, b, subset)] = stat
            best_a, best_b = cells.best(fa, x), cells.best(fb, x)
            if best_a and best_b:
                stat = best_a[0] - best_b[0]
                gaps.append(_gap_entry(fa, fb, "family_best", subset, x, best_a[1], best_b[1], stat, level))
                stats[(fa, fb, "family_best", None, None, subset)] = stat
    return gaps, stats


def _gap_entry(fa, fb, kind, subset, x, a, b, stat: _Stat, level) -> dict[str, Any]:
    ci = stat.ci(level)
    return {"families": [fa, fb], "kind": kind, "subset": subset, "x": x, "a": a, "b": b, "gap": stat.value,
            "ci": ci, "ci_excludes_0": None if ci is None else bool(stat.sign(level)),
            "note": None if ci is not None else (stat.why or None)}


def _ordering(gaps: list[dict], stats: dict[tuple, _Stat], level: float) -> list[dict[str, Any]]:
    out = []
    for (fa, fb, kind, a, b, subset), small in stats.items():
        if subset != "smallest":
            continue
        large = stats.get((fa, fb, kind, a, b, "largest"))
        if large is None:
            continue
        flips = bool(np.sign(small.value) * np.sign(large.value) < 0)
        ss, sl = small.sign(level), large.sign(level)
        supported = None if ss is None or sl is None else bool(ss * sl < 0)
        if kind == "family_best":
            a, b = display_name(fa), display_name(fb)
        who = f"{a} vs {b}" if kind == "same_size" else f"{a} vs {b} (best of each)"
        if not flips:
            text = (f"{who}: no flip; {_pts(small.value, sign=True)} at the smallest size, "
                    f"{_pts(large.value, sign=True)} at the largest")
        else:
            how = ("supported: both intervals exclude 0" if supported else
                   "not distinguishable from seed noise: an interval includes 0" if supported is False else
                   "no interval (1 seed)")
            text = (f"{who}: the ordering flips, {_pts(small.value, sign=True)} at the smallest size → "
                    f"{_pts(large.value, sign=True)} at the largest ({how})")
        out.append({"families": [fa, fb], "kind": kind, "a": a, "b": b, "gap_smallest": small.value,
                    "gap_largest": large.value, "ci_smallest": small.ci(level), "ci_largest": large.ci(level),
                    "flips": flips, "flip_supported": supported if flips else None, "statement": text})
    return out


def _all_crossovers(cells: _Cells, fits: Mapping[str, PowerLawFit], level: float) -> list[dict[str, Any]]:
    out = []
    for fa, fb in family_pairs([m["family"] for m in cells.lines.values()]):
        la, lb = cells.of_family(fa), cells.of_family(fb)
        if not la or not lb:
            continue
        candidates = [("same_size", [a], [b]) for a in la for b in lb
                      if cells.lines[a]["size"] is not None and cells.lines[a]["size"] == cells.lines[b]["size"]]
        candidates.append(("family_best", la, lb))
        for kind, sa, sb in candidates:
            xs_a = sorted({x for ln in sa for x in cells.sizes_of(ln)})
            xs_b = sorted({x for ln in sb for x in cells.sizes_of(ln)})
            lo, hi = max(xs_a[0], xs_b[0]), min(xs_a[-1], xs_b[-1])
            n_sizes = min(len(cells.sizes_of(ln)) for ln in (*sa, *sb))
            name_a = sa[0] if kind == "same_size" else display_name(fa)
            name_b = sb[0] if kind == "same_size" else display_name(fb)
            c = _crossover(name_a, name_b, [fits[ln] for ln in sa if ln in fits],
                           [fits[ln] for ln in sb if ln in fits], lo, hi, n_sizes, level)
            what = (f"{name_a} vs {name_b}" if kind == "same_size" else
                    f"{name_a} vs {name_b} (best fitted curve of each family)")
            unfitted = [ln for ln in (*sa, *sb) if ln not in fits]
            if kind == "family_best" and unfitted and c["status"] != "undetermined":
                c["note"] = f"envelope of the fitted lines only; no fit for {', '.join(unfitted)}"
            c.update(families=[fa, fb], kind=kind, a=name_a, b=name_b, statement=_crossover_statement(c, what))
            out.append(c)
    return out


# ----------------------------------------------------------------------------------------------
# The paper's findings


def _verdict(signs: list[int | None]) -> str:
    """Every comparison's interval on the claimed side → holds; any on the other side → does not hold."""
    if any(s == -1 for s in signs):
        return FAILS
    if signs and all(s == 1 for s in signs):
        return HOLDS
    return UNKNOWN


def _claim_small_subset(cells: _Cells, level: float) -> dict[str, Any]:
    claim = "at the smallest subset, the convolutional BiT is ahead of Mixer and ViT"
    entry = {"id": 1, "claim": claim, "verdict": UNKNOWN, "why": "", "numbers": {}}
    x = cells.sizes[0]
    bit = cells.best("bit", x)
    rivals = [f for f in ("mixer", "vit") if cells.best(f, x)]
    if bit is None or "mixer" not in rivals:
        entry["why"] = f"no {'BiT' if bit is None else 'Mixer'} runs at the smallest size ({_num(x)})"
        return entry
    signs, parts, whys = [], [], []
    numbers: dict[str, Any] = {"x": x}
    for fam in rivals:
        other = cells.best(fam, x)
        stat = bit[0] - other[0]
        ci = stat.ci(level)
        whys.append(stat.why)
        numbers[f"bit_minus_{fam}"] = stat.value
        numbers[f"bit_minus_{fam}_ci"] = ci
        numbers[f"best_{fam}"] = other[1]
        signs.append(stat.sign(level))
        parts.append(f"BiT − {FAMILY_NAMES[fam]} {_pts(stat.value, sign=True)} {_ci(ci)}".rstrip())
    numbers["best_bit"] = bit[1]
    entry.update(numbers=numbers, verdict=_verdict(signs))
    why = "; ".join(parts) + f" at {_num(x)}"
    entry["why"] = why + _reason(entry["verdict"], signs, whys)
    return entry


def _claim_gains(cells: _Cells, fits: Mapping[str, PowerLawFit], level: float) -> dict[str, Any]:
    claim = "Mixer (and ViT) gain more from more pre-training data than BiT"
    entry = {"id": 2, "claim": claim, "verdict": UNKNOWN, "why": "", "numbers": {}, "parts": []}
    small, large = cells.sizes[0], cells.sizes[-1]
    if len(cells.sizes) < 2:
        entry["why"] = "one data size only"
        return entry
    if not cells.of_family("bit") or not cells.of_family("mixer"):
        entry["why"] = f"no {'BiT' if not cells.of_family('bit') else 'Mixer'} runs"
        return entry
    gains = {}
    for fam in ("mixer", "vit", "bit"):
        lo, hi = cells.best(fam, small), cells.best(fam, large)
        if lo and hi:
            gains[fam] = (hi[0] - lo[0], hi[1])
    if "bit" not in gains or "mixer" not in gains:
        entry["why"] = "a family lacks runs at the smallest or the largest size"
        return entry
    for fam in ("mixer", "vit"):
        if fam not in gains:
            continue
        diff = gains[fam][0] - gains["bit"][0]
        rep_a, rep_b = gains[fam][1], gains["bit"][1]
        part: dict[str, Any] = {
            "families": [fam, "bit"], "gain": gains[fam][0].value, "gain_ci": gains[fam][0].ci(level),
            "bit_gain": gains["bit"][0].value, "bit_gain_ci": gains["bit"][0].ci(level),
            "gain_difference": diff.value, "gain_difference_ci": diff.ci(level),
            "model": rep_a, "bit_model": rep_b, "b": None, "bit_b": None, "b_difference": None,
            "b_difference_ci": None, "b_note": None,
        }
        g = diff.sign(level)
        e = None
        fa, fb = fits.get(rep_a), fits.get(rep_b)
        if fa is None or fb is None:
            part["b_note"] = f"no fitted exponent for {rep_a if fa is None else rep_b}"
        else:
            part.update(b=fa.b, bit_b=fb.b)
            if min(fa.n_groups, fb.n_groups) < MIN_SIZES:
                part["b_note"] = f"fewer than {MIN_SIZES} sizes: exponents not conclusive"
            else:
                bd = _exponent_difference(fa, fb)
                part.update(b_difference=bd.value, b_difference_ci=bd.ci(level))
                e = bd.sign(level)
        verdict = HOLDS if g == 1 and e != -1 else FAILS if g == -1 and e != 1 else UNKNOWN
        name = FAMILY_NAMES[fam]
        text = (f"{name} gains {_pts(part['gain'], sign=True)} {_ci(part['gain_ci'])}, BiT "
                f"{_pts(part['bit_gain'], sign=True)} {_ci(part['bit_gain_ci'])} (best model of each family, "
                f"{_num(small)} → {_num(large)}); difference {_pts(diff.value, sign=True)} {_ci(diff.ci(level))}")
        text = " ".join(text.split())
        if part["b_difference"] is not None:
            text += (f"; exponent b {part['b']:.2f} ({rep_a}) vs {part['bit_b']:.2f} ({rep_b}), difference "
                     f"{part['b_difference']:+.2f} {_ci(part['b_difference_ci'], scale=1, digits=2)}".rstrip())
        elif part["b_note"]:
            text += f"; exponents: {part['b_note']}"
        if verdict == UNKNOWN:
            text += ("; the gains are not distinguishable from seed noise" if g == 0 else
                     f"; no interval ({diff.why})" if g is None else "; the gain and the exponent disagree")
        part.update(verdict=verdict, why=text)
        entry["parts"].append(part)
    main = entry["parts"][0]
    entry.update(verdict=main["verdict"], why=main["why"], numbers={k: v for k, v in main.items()
                                                                    if k not in ("verdict", "why")})
    if len(entry["parts"]) > 1:
        entry["why"] += f" (ViT vs BiT: {entry['parts'][1]['verdict']})"
    return entry


def _claim_frontier(front: dict[str, Any] | None, level: float) -> dict[str, Any]:
    entry = {"id": 3, "claim": "Mixer is on the compute Pareto frontier", "verdict": UNKNOWN, "why": "",
             "numbers": {}}
    if front is None or "mixer" not in front["families"]:
        entry["why"] = "no Mixer points in the compute figure"
        return entry
    v = front["families"]["mixer"]
    on = v["on_frontier"] > 0
    share = (front["bootstrap_share"] or {}).get("mixer")
    entry["numbers"] = {"on_frontier_of_means": on, "points_on_frontier": v["on_frontier"], "points": v["points"],
                        "x_min": v["x_min"], "x_max": v["x_max"], "axis": front["axis"], "bootstrap_share": share}
    where = (f"{v['on_frontier']} of {v['points']} Mixer points on it ({front['axis']} "
             f"{_span(v['x_min'], v['x_max'])})" if on else f"none of {v['points']} Mixer points on it")
    if len(front["families"]) == 1:
        entry["why"] = f"{where}, but no other family is in the figure: nothing to be on a frontier against"
        return entry
    if share is None:
        entry["why"] = f"{where} for the means; {front['bootstrap_note']}"
        return entry
    entry["verdict"] = HOLDS if share >= level else FAILS if share <= 1 - level else UNKNOWN
    entry["why"] = f"{where}; a Mixer is on it in {100 * share:.0f}% of bootstrap resamples over seeds"
    return entry


def _reason(verdict: str, signs: list[int | None], whys: list[str]) -> str:
    if verdict != UNKNOWN:
        return ""
    if any(s is None for s in signs):
        why = next((w for w in whys if w), "") or "1 seed"
        return f" (no interval: {why})"
    return " (an interval includes 0: not distinguishable from seed noise)"


# ----------------------------------------------------------------------------------------------
# Formatting


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 1 and x == round(x) and abs(x) < 1e7 else f"{x:.3g}"


def _pts(v: float | None, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{100 * v:+.1f} pts" if sign else f"{100 * v:.1f}%"


def _ci(ci: list[float] | None, scale: float = 100, digits: int = 1, sign: bool = True) -> str:
    if ci is None:
        return ""
    fmt = f"{'+' if sign else ''}.{digits}f"
    return f"[{scale * ci[0]:{fmt}}, {scale * ci[1]:{fmt}}]"


def _span(lo: float | None, hi: float | None) -> str:
    return _num(lo) if lo == hi else f"{_num(lo)}–{_num(hi)}"


def _kind(kind: str) -> str:
    return "same size" if kind == "same_size" else "best of each family"


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN and infinities as null."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


__all__ = ["EXTRAPOLATE", "FAILS", "Findings", "HOLDS", "MIN_SIZES", "UNKNOWN", "study_findings"]
