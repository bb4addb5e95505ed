"""Linear few-shot evaluation exactly as big_vision's ``fewshot_lsr`` (the MLP-Mixer paper's protocol).

For each seed, every class's pool examples are permuted once (``np.random.default_rng(seed)``); the
k-shot training set is the first k of each class (so the 5 shots contain the 1 shot). Features are
whitened with the few-shot set's mean and population std (+1e-5), a constant feature 100 is
appended (a bias that is almost unregularised), targets are ``2·onehot − 1``, and the ridge solution
``(XᵀX + λI)⁻¹XᵀY`` (or its dual form ``Xᵀ(XXᵀ + λI)⁻¹Y`` when there are fewer points than
features) predicts the test set by argmax. Solved in float64 on the CPU: the systems are tiny, and
float64 keeps the answer independent of the device the features came from.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

BIAS_CONSTANT = 100.0


def ridge_predict(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, num_classes: int,
                  l2_reg: float = 2.0**10) -> torch.Tensor:
    """Fit the whitened ridge regression on (x, y) and return argmax predictions for ``x_test``."""
    x, x_test = x.double(), x_test.double()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True) + 1e-5
    x = torch.nn.functional.pad((x - mean) / std, (0, 1), value=BIAS_CONSTANT)
    x_test = torch.nn.functional.pad((x_test - mean) / std, (0, 1), value=BIAS_CONSTANT)
    targets = 2.0 * torch.nn.functional.one_hot(y.long(), num_classes).double() - 1.0
    n, d = x.shape
    if n >= d:
        w = torch.linalg.solve(x.T @ x + l2_reg * torch.eye(d, dtype=x.dtype), x.T @ targets)
    else:
        w = x.T @ torch.linalg.solve(x @ x.T + l2_reg * torch.eye(n, dtype=x.dtype), targets)
    return (x_test @ w).argmax(1)


def fewshot_eval(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, shots: Sequence[int] = (1, 5, 10, 25),
                 seeds: Sequence[int] = (0, 1, 2), l2_reg: float = 2.0**10) -> dict[int, float]:
    """Mean test accuracy over ``seeds`` for every k in ``shots``."""
    train_labels_np = np.asarray(torch.as_tensor(train_labels).cpu())
    test_labels = torch.as_tensor(test_labels).cpu()
    train_feats, test_feats = torch.as_tensor(train_feats).cpu(), torch.as_tensor(test_feats).cpu()
    num_classes = int(max(train_labels_np.max(), test_labels.max().item())) + 1
    counts = np.bincount(train_labels_np, minlength=num_classes)
    if min(shots) < 1 or max(shots) > counts.min():
        raise ValueError(f"fewshot.shots={list(shots)}: every k must be in [1, {counts.min()}], "
                         f"the fewest pool examples of any class")
    accs: dict[int, list[float]] = {k: [] for k in shots}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        per_class = [rng.permutation(np.flatnonzero(train_labels_np == c)) for c in range(num_classes)]
        for k in shots:
            idx = torch.from_numpy(np.concatenate([p[:k] for p in per_class]))
            preds = ridge_predict(train_feats[idx], torch.from_numpy(train_labels_np[idx.numpy()]),
                                  test_feats, num_classes, l2_reg)
            accs[k].append((preds == test_labels).double().mean().item())
    return {k: float(np.mean(v)) for k, v in accs.items()}
