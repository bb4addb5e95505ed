"""Saturating power laws of error against data size or compute: ``err = a · x^(−b) + c``.

``a`` scales the reducible error, ``b`` is the scaling exponent (the "slope" in log-log space while
``c`` is small), ``c`` the irreducible error the curve saturates at.

The fit is least squares in log space, ``log err − log(a·x^(−b) + c)``, so that a 1% error and a
50% error weigh alike. Observations at the same ``x`` (seeds) enter through their mean log error,
weighted by their count, which gives the same minimiser as fitting every observation. ``x`` is
scaled by its geometric mean before fitting, so FLOPs (1e20) and data fractions (0.03) are equally
well conditioned. Bounds: ``a > 0``, ``0 ≤ b ≤ 5``, ``0 ≤ c ≤`` the largest mean error. Several
starting points (a grid over ``b`` and ``c``) are run at once with a vectorised, bound-projected
Levenberg–Marquardt; the best is polished with :func:`scipy.optimize.least_squares` (``trf``).
Bootstrap refits use the vectorised solver, started at the fit.

Confidence intervals come from a bootstrap:

* ``stratified`` when some ``x`` has several observations (seeds): the observations are resampled
  within each ``x``, so the interval reflects seed-to-seed noise;
* ``residual`` when every ``x`` has one observation and there are more ``x`` values than the three
  parameters: the log residuals (inflated by ``sqrt(n / (n − 3))``) are resampled onto the fit;
* ``none`` otherwise (three points, one each: an exact fit, no interval; the bounds are NaN).

Intervals are percentile intervals of the refitted parameters; :meth:`PowerLawFit.band` gives the
pointwise percentile band of the fitted curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from ..errors import UserError

B_MAX = 5.0
_B_STARTS = (0.05, 0.2, 0.5, 1.0, 2.0)
_C_STARTS = (0.0, 0.5, 0.9)  # fractions of the smallest mean error
PARAMS = ("a", "b", "c")


@dataclass
class PowerLawFit:
    """A fitted ``err = a·x^(−b) + c`` with bootstrap samples; ``a`` is in the units of ``x``.

    Internally the curve is ``A·(x / x_ref)^(−b) + c`` with ``A = a · x_ref^(−b)``, which stays
    finite for any ``x``; :attr:`a` converts back.
    """

    log_A: float
    b: float
    c: float
    x_ref: float
    n_points: int
    n_groups: int
    rmse_log: float
    method: str = "none"
    level: float = 0.95
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))  # rows of (log_A, b, c)

    @property
    def a(self) -> float:
        return float(np.exp(self.log_A) * self.x_ref ** self.b)

    def predict(self, x) -> np.ndarray:
        u = np.asarray(x, dtype=float) / self.x_ref
        return np.exp(self.log_A) * u ** (-self.b) + self.c

    def _sample_params(self) -> dict[str, np.ndarray]:
        s = self.samples
        return {"a": np.exp(s[:, 0]) * self.x_ref ** s[:, 1], "b": s[:, 1], "c": s[:, 2]}

    @property
    def ci(self) -> dict[str, tuple[float, float]]:
        """``{param: (low, high)}`` percentile intervals at :attr:`level` (NaN without a bootstrap)."""
        if len(self.samples) == 0:
            return {p: (math.nan, math.nan) for p in PARAMS}
        q = [50 * (1 - self.level), 50 * (1 + self.level)]
        return {p: tuple(float(v) for v in np.percentile(vals, q)) for p, vals in self._sample_params().items()}

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the curve at ``x`` (NaN without a bootstrap)."""
        x = np.asarray(x, dtype=float)
        if len(self.samples) == 0:
            nan = np.full(x.shape, np.nan)
            return nan, nan
        s = self.samples
        u = x[None, :] / self.x_ref
        curves = np.exp(s[:, :1]) * u ** (-s[:, 1:2]) + s[:, 2:3]
        q = [50 * (1 - self.level), 50 * (1 + self.level)]
        lo, hi = np.percentile(curves, q, axis=0)
        return lo, hi

    def as_dict(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {}
        ci = self.ci
        for p in PARAMS:
            out[p] = float(getattr(self, p))
            out[f"{p}_lo"], out[f"{p}_hi"] = ci[p]
        out.update(n_points=self.n_points, n_groups=self.n_groups, rmse_log=self.rmse_log,
                   bootstrap=self.method, n_boot=len(self.samples), level=self.level)
        return out


# ----------------------------------------------------------------------------------------------
# Least squares


def _curve(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.exp(theta[0]) * u ** (-theta[1]) + theta[2]


def _solve(u: np.ndarray, m: np.ndarray, sw: np.ndarray, starts: Iterable[np.ndarray],
           c_max: float) -> tuple[np.ndarray, float]:
    """Best (theta, cost) over ``starts`` for weighted log-space residuals ``sw·(m − log f(u))``."""
    log_u = np.log(u)

    def fun(theta):
        return sw * (m - np.log(_curve(theta, u)))

    def jac(theta):
        reducible = np.exp(theta[0]) * u ** (-theta[1])
        f = reducible + theta[2]
        return -sw[:, None] * np.stack([reducible / f, -reducible * log_u / f, 1.0 / f], axis=1)

    lower, upper = np.array([-np.inf, 0.0, 0.0]), np.array([np.inf, B_MAX, c_max])
    best, best_cost = None, np.inf
    for x0 in starts:
        x0 = np.clip(x0, lower + [0, 1e-9, 1e-12 * c_max], upper * (1 - 1e-9))
        try:
            res = least_squares(fun, x0, jac=jac, bounds=(lower, upper), method="trf", x_scale="jac")
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(res.cost) and res.cost < best_cost:
            best, best_cost = res.x, float(res.cost)
    if best is None:
        raise UserError("the power-law fit did not converge from any starting point")
    return best, best_cost


def _batched_lm(u: np.ndarray, M: np.ndarray, sw: np.ndarray, theta0: np.ndarray, c_max: np.ndarray,
                iters: int = 100) -> np.ndarray:
    """Levenberg–Marquardt on many problems at once, projected onto the bounds.

    Row ``i`` of ``M`` (mean log errors) is fitted from row ``i`` of ``theta0`` with its own upper
    bound ``c_max[i]`` on ``c``. Used for the many starting points and the bootstrap refits, where
    calling :func:`~scipy.optimize.least_squares` hundreds of times would dominate the run time.
    """
    log_u = np.log(u)[None, :]
    theta = theta0.astype(float).copy()
    upper = np.stack([np.full(len(theta), np.inf), np.full(len(theta), B_MAX), c_max], axis=1)
    lower = np.array([-np.inf, 0.0, 0.0])

    def residual_and_jac(th):
        reducible = np.exp(th[:, :1] + (-th[:, 1:2]) * log_u)
        f = reducible + th[:, 2:3]
        r = sw * (M - np.log(f))
        jac = -sw[None, :, None] * np.stack([reducible / f, -reducible * log_u / f, 1.0 / f], axis=2)
        return r, jac

    r, jac = residual_and_jac(theta)
    cost = (r ** 2).sum(axis=1)
    lam = np.full(len(theta), 1e-3)
    eye = np.eye(3)[None]
    for _ in range(iters):
        h = np.einsum("bgi,bgj->bij", jac, jac)
        g = np.einsum("bgi,bg->bi", jac, r)
        damp = lam[:, None, None] * (h * eye) + 1e-12 * eye
        step = -np.linalg.solve(h + damp, g[:, :, None])[:, :, 0]
        trial = np.clip(theta + step, lower, upper)
        r_t, jac_t = residual_and_jac(trial)
        cost_t = (r_t ** 2).sum(axis=1)
        better = np.isfinite(cost_t) & (cost_t < cost)
        gain = np.where(better, cost - cost_t, 0.0)
        theta[better], r[better], jac[better], cost[better] = trial[better], r_t[better], jac_t[better], cost_t[better]
        lam = np.where(better, lam / 3.0, lam * 4.0)
        if np.all((better & (gain <= 1e-12 * (1.0 + cost))) | (lam > 1e10)):  # every problem has stalled
            break
    return theta


def _starts(u: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
    err = np.exp(m)
    out = []
    for b0 in _B_STARTS:
        for cf in _C_STARTS:
            c0 = cf * err.min()
            reducible = np.maximum(err - c0, 1e-3 * err)
            out.append(np.array([np.log(np.median(reducible * u ** b0)), b0, c0]))
    return out


def fit_power_law(x, err, *, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> PowerLawFit:
    """Fit ``err = a·x^(−b) + c`` (see the module docstring) with a bootstrap of ``n_boot`` refits.

    ``x`` and ``err`` are 1-D and the same length; pairs with a non-finite or non-positive value are
    dropped. Raises :class:`UserError` when fewer than three distinct ``x`` values remain.
    """
    x, err = np.asarray(x, dtype=float).ravel(), np.asarray(err, dtype=float).ravel()
    if x.shape != err.shape:
        raise UserError(f"x and err differ in length ({len(x)} vs {len(err)})")
    keep = np.isfinite(x) & np.isfinite(err) & (x > 0) & (err > 0)
    x, y = x[keep], np.log(err[keep])
    xs, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(xs) < 3:
        raise UserError(f"a power-law fit needs at least 3 distinct x values with a positive error; got {len(xs)}")
    x_ref = float(np.exp(np.log(xs).mean()))
    u = xs / x_ref
    m = np.bincount(inverse, weights=y) / counts
    sw = np.sqrt(counts.astype(float))
    c_max = float(np.exp(m.max()))
    starts = np.array(_starts(u, m))
    rough = _batched_lm(u, np.tile(m, (len(starts), 1)), sw, starts, np.full(len(starts), c_max))
    rough_cost = [((sw * (m - np.log(_curve(t, u)))) ** 2).sum() for t in rough]
    theta, _ = _solve(u, m, sw, [rough[int(np.nanargmin(rough_cost))], *starts[:1]], c_max)
    resid = y - np.log(_curve(theta, u))[inverse]
    fit = PowerLawFit(log_A=float(theta[0]), b=float(theta[1]), c=float(theta[2]), x_ref=x_ref,
                      n_points=int(len(x)), n_groups=int(len(xs)),
                      rmse_log=float(np.sqrt(np.mean(resid ** 2))), level=level)
    rng = np.random.default_rng(seed)
    if n_boot <= 0:
        return fit
    if counts.max() > 1:
        fit.method = "stratified"
        boot_m = _stratified_means(y, inverse, counts, n_boot, rng)
    elif len(xs) > 3:
        fit.method = "residual"
        r = (m - np.log(_curve(theta, u))) * math.sqrt(len(xs) / (len(xs) - 3))
        boot_m = np.log(_curve(theta, u))[None, :] + rng.choice(r, size=(n_boot, len(xs)), replace=True)
    else:
        return fit
    samples = _batched_lm(u, boot_m, sw, np.tile(theta, (len(boot_m), 1)), np.exp(boot_m.max(axis=1)))
    fit.samples = samples[np.isfinite(samples).all(axis=1)]
    return fit


def _stratified_means(y: np.ndarray, inverse: np.ndarray, counts: np.ndarray, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, groups)`` means of the observations of each group resampled with replacement."""
    out = np.empty((n_boot, len(counts)))
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for g, (s, n) in enumerate(zip(starts, counts)):
        values = y[order[s:s + n]]
        out[:, g] = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n > 1 else values[0]
    return out


def loglog_slope(x, err) -> float:
    """Least-squares slope of log err against log x (a plain power law, e.g. for two data sizes)."""
    x, err = np.asarray(x, dtype=float), np.asarray(err, dtype=float)
    keep = np.isfinite(x) & np.isfinite(err) & (x > 0) & (err > 0)
    if len(np.unique(x[keep])) < 2:
        return math.nan
    return float(np.polyfit(np.log(x[keep]), np.log(err[keep]), 1)[0])


def fits_table(fits: Mapping[str, PowerLawFit], **columns: Mapping[str, object]) -> pd.DataFrame:
    """One row per fit: ``label``, the extra ``columns`` (each ``{label: value}``), then a, b, c with
    their interval bounds, n_points, n_groups, rmse_log, bootstrap, n_boot, level."""
    rows = []
    for label, fit in fits.items():
        row = {"label": label, **{k: v.get(label) for k, v in columns.items()}}
        row.update(fit.as_dict())
        rows.append(row)
    header = ["label", *columns, *(f"{p}{s}" for p in PARAMS for s in ("", "_lo", "_hi")),
              "n_points", "n_groups", "rmse_log", "bootstrap", "n_boot", "level"]
    return pd.DataFrame(rows, columns=header)


__all__ = ["PowerLawFit", "fit_power_law", "fits_table", "loglog_slope"]
