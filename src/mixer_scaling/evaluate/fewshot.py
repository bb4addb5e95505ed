"""Linear few-shot evaluation of frozen features, the protocol of big_vision's ``fewshot_lsr``.

Pure numpy; no models here. For every seed ``s`` a ``numpy.random.default_rng(s)`` permutes the
examples of each class of the pool once, and the ``k``-shot training set is the first ``k`` of each
class's permutation (so within a seed the 1-shot set is inside the 5-shot set, as in big_vision). On
that set:

1. standardise every feature with the few-shot set's own mean and standard deviation (population std,
   ``ddof=0``, plus ``1e-5`` added to the std, not under the square root); the test features use the
   same mean and std;
2. append a constant feature ``100`` (a bias that the ridge penalty barely touches);
3. targets ``2 * onehot(y) - 1`` in {-1, +1};
4. closed-form ridge regression ``W = (X^T X + l2_reg I)^-1 X^T Y`` (the bias column is penalised like
   the rest, as in big_vision); when there are fewer points than dimensions the identical dual form
   ``W = X^T (X X^T + l2_reg I)^-1 Y`` is solved instead (big_vision switches the same way, via eigh);
5. predict ``argmax(X_test W)`` and report the accuracy.

Everything is computed in float64: the normal equations square the condition number and the bias
column is 100 times larger than the standardised features, so float32 (big_vision's default) can
lose a few digits; float64 makes the result independent of the BLAS and of the feature dtype.

The draws depend on the pool's labels alone, so a large pool (ImageNet's 1.28M training images) needs
features only for the images some seed draws: :func:`chosen_indices` names them, and
:func:`fewshot_accuracies` takes their features with ``pool_index`` (the accuracies are those of the
whole pool's features, the same images being drawn).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "BIAS_CONSTANT",
    "STD_EPS",
    "DEFAULT_L2_REG",
    "fewshot_indices",
    "chosen_indices",
    "ridge_fit",
    "ridge_predict",
    "fewshot_accuracies",
    "fewshot_eval",
]

BIAS_CONSTANT = 100.0
STD_EPS = 1e-5
DEFAULT_L2_REG = 2.0**10


def _numpy(x) -> np.ndarray:
    """numpy view of an array-like; torch tensors (any device / dtype) are moved to the CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        return x.numpy()
    return np.asarray(x)


def _as_features(x, name: str) -> np.ndarray:
    x = np.asarray(_numpy(x), dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (examples x features), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _as_labels(y, n: int, name: str) -> np.ndarray:
    y = _numpy(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be a 1-D array of {n} labels, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0)):
        raise ValueError(f"{name} must hold integer class labels")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{name} must be >= 0")
    return y


def ridge_fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2_reg: float = DEFAULT_L2_REG):
    """Fit the big_vision few-shot ridge regression on (``x``, ``y``).

    Returns ``(w, mean, std)``: ``w`` is ``(D + 1) x C`` (the last row multiplies the bias feature),
    ``mean`` and ``std`` the standardisation (``std`` already includes the ``1e-5``).
    """
    x = _as_features(x, "x")
    y = _as_labels(y, len(x), "y")
    if l2_reg < 0:
        raise ValueError(f"l2_reg={l2_reg} must be >= 0")
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True) + STD_EPS
    xs = np.concatenate([(x - mean) / std, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)
    t = 2.0 * np.eye(num_classes)[y] - 1.0
    n, d = xs.shape
    if n >= d:  # primal: (X^T X + l2 I) W = X^T Y
        w = np.linalg.solve(xs.T @ xs + l2_reg * np.eye(d), xs.T @ t)
    else:  # dual: W = X^T (X X^T + l2 I)^-1 Y
        w = xs.T @ np.linalg.solve(xs @ xs.T + l2_reg * np.eye(n), t)
    return w, mean, std


def ridge_predict(
    train_feats,
    train_labels,
    test_feats,
    num_classes: int | None = None,
    l2_reg: float = DEFAULT_L2_REG,
) -> np.ndarray:
    """Class predictions (int64) for ``test_feats`` of the ridge fitted on the training features
    (standardised with the training mean/std, bias 100, targets in {-1, +1}, argmax).

    Returns a torch tensor when ``test_feats`` is one, else a numpy array."""
    train_labels = _numpy(train_labels)
    train_labels = _as_labels(train_labels, len(train_labels), "train_labels")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    w, mean, std = ridge_fit(train_feats, train_labels, num_classes, l2_reg)
    xt = _as_features(test_feats, "test_feats")
    if xt.shape[1] != mean.shape[1]:
        raise ValueError(f"test_feats has {xt.shape[1]} features, the training features {mean.shape[1]}")
    xt = np.concatenate([(xt - mean) / std, np.full((len(xt), 1), BIAS_CONSTANT)], axis=1)
    pred = np.argmax(xt @ w, axis=1).astype(np.int64)
    if hasattr(test_feats, "detach"):
        import torch

        return torch.from_numpy(pred)
    return pred


def fewshot_indices(labels, shots: Sequence[int], seed: int, num_classes: int) -> dict[int, np.ndarray]:
    """Pool indices of the ``k``-shot training set for every ``k``, for one seed (big_vision's draw:
    one permutation per class with ``default_rng(seed)``, classes in order, the first ``k`` of each)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    # each class's indices in increasing order (np.where(labels == c) of every class, in one sort)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    per_class = [rng.permutation(order[bounds[c]:bounds[c + 1]]) for c in range(num_classes)]
    out = {}
    for k in shots:
        short = [c for c, ix in enumerate(per_class) if len(ix) < k]
        if short:
            fewest = min(len(per_class[c]) for c in short)
            raise ValueError(
                f"fewshot.shots={list(shots)}: k={k} needs {k} pool examples per class, but class {short[0]} "
                f"has {len(per_class[short[0]])} (the fewest: {fewest}); allowed: k <= {fewest}"
            )
        out[k] = np.concatenate([ix[:k] for ix in per_class])
    return out


def chosen_indices(labels, shots: Iterable[int], seeds: Iterable[int], num_classes: int | None = None) -> np.ndarray:
    """The pool indices (sorted, each once) that some seed's ``k``-shot set draws for some ``k`` in ``shots``:
    at most ``max(shots) x classes x seeds`` of them. ``num_classes`` as in :func:`fewshot_accuracies`
    (default: one more than the largest label)."""
    labels = _as_labels(labels, len(_numpy(labels)), "labels")
    shots, seeds = _check_shots(shots), tuple(int(s) for s in seeds)
    if num_classes is None:
        num_classes = int(labels.max(initial=-1)) + 1
    drawn = [idx for seed in seeds for idx in fewshot_indices(labels, shots, seed, num_classes).values()]
    return np.unique(np.concatenate(drawn)) if drawn else np.zeros(0, dtype=np.int64)


def _check_shots(shots: Iterable[int]) -> tuple[int, ...]:
    shots = tuple(shots)
    for k in shots:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"shots k={k!r} must be a positive integer")
    return tuple(int(k) for k in shots)


def fewshot_accuracies(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    shots: Iterable[int] = (1, 5, 10, 25),
    seeds: Iterable[int] = (0, 1, 2),
    l2_reg: float = DEFAULT_L2_REG,
    num_classes: int | None = None,
    pool_index=None,
) -> dict[int, list[float]]:
    """Test accuracy of every seed for every ``k``: ``{k: [acc_seed0, acc_seed1, ...]}``.

    ``pool_index``: ``train_feats`` are the features of these pool examples only (sorted, each once, at
    least :func:`chosen_indices`), and ``train_labels`` the labels of the whole pool; the draws and the
    accuracies are those of the whole pool's features. A drawn example without features raises ValueError.
    """
    shots = _check_shots(shots)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    xtr = _as_features(train_feats, "train_feats")
    if pool_index is None:
        ytr = _as_labels(train_labels, len(xtr), "train_labels")
        rows = None
    else:
        ytr = _as_labels(train_labels, len(_numpy(train_labels)), "train_labels")
        rows = np.asarray(_numpy(pool_index), dtype=np.int64)
        if rows.ndim != 1 or len(rows) != len(xtr) or np.any(np.diff(rows) <= 0):
            raise ValueError(f"pool_index must be {len(xtr)} sorted distinct pool indices, one per row of train_feats")
    xte = _as_features(test_feats, "test_feats")
    yte = _as_labels(test_labels, len(xte), "test_labels")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_feats has {xtr.shape[1]} features, test_feats {xte.shape[1]}")
    if len(xte) == 0:
        raise ValueError("test_feats is empty")
    if num_classes is None:
        num_classes = int(max(ytr.max(initial=-1), yte.max(initial=-1))) + 1
    results: dict[int, list[float]] = {k: [] for k in shots}
    for seed in seeds:
        for k, idx in fewshot_indices(ytr, shots, seed, num_classes).items():
            at = idx if rows is None else _rows_of(rows, idx)
            pred = ridge_predict(xtr[at], ytr[idx], xte, num_classes, l2_reg)
            results[k].append(float(np.mean(pred == yte)))
    return results


def _rows_of(rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Where the pool indices ``idx`` are in the sorted ``rows``."""
    at = np.minimum(np.searchsorted(rows, idx), max(len(rows) - 1, 0))
    if len(idx) and (not len(rows) or np.any(rows[at] != idx)):
        missing = idx[rows[at] != idx][0] if len(rows) else idx[0]
        raise ValueError(f"pool example {int(missing)} is drawn but has no features (not in pool_index)")
    return at


def fewshot_eval(
    train_feats,
    train_labels,
    test_feats,
    test_labels,
    shots: Iterable[int] = (1, 5, 10, 25),
    seeds: Iterable[int] = (0, 1, 2),
    l2_reg: float = DEFAULT_L2_REG,
    num_classes: int | None = None,
    pool_index=None,
) -> dict[int, float]:
    """Mean test accuracy over ``seeds`` of the ``k``-shot linear ridge classifier, for each ``k``.

    ``train_feats`` (N x D) / ``train_labels`` (N,) are the pool the shots are drawn from,
    ``test_feats`` / ``test_labels`` the test set; labels are ``0 .. num_classes - 1`` (by default one
    more than the largest label seen). A class with fewer than ``k`` pool examples raises ValueError.
    ``pool_index``: features of part of the pool only, see :func:`fewshot_accuracies`.
    """
    acc = fewshot_accuracies(train_feats, train_labels, test_feats, test_labels, shots, seeds, l2_reg, num_classes,
                             pool_index)
    return {k: float(np.mean(v)) for k, v in acc.items()}
