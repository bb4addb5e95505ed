"""The linear few-shot evaluator against an independent float64 reference of big_vision's fewshot_lsr."""

import numpy as np
import pytest
import torch

from mixer_scaling.evaluate.fewshot import fewshot_eval, ridge_predict


def reference_lsr(x, y, x_test, num_classes, l2):
    """big_vision's eigen-decomposition form, in numpy float64."""
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
    x = np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
    x_test = np.pad((x_test - mean) / std, ((0, 0), (0, 1)), constant_values=100.0)
    t = 2.0 * np.eye(num_classes)[y] - 1.0
    if len(x) >= x.shape[1]:
        eigs, q = np.linalg.eigh(x.T @ x)
        lhs, rhs = q, q.T @ (x.T @ t)
    else:
        eigs, q = np.linalg.eigh(x @ x.T)
        lhs, rhs = x.T @ q, q.T @ t
    w = (lhs / (eigs + l2)) @ rhs
    return x_test @ w


def blobs(n_per_class, num_classes, dim, spread, seed):
    """Gaussian classes around fixed centres (the same for every ``seed``: train and test share them)."""
    centers = np.random.default_rng(1234).normal(size=(num_classes, dim)) * 3
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    return (centers[y] + rng.normal(size=(len(y), dim)) * spread).astype(np.float32), y


@pytest.mark.parametrize("n_per_class,dim", [(5, 64), (40, 16)])  # dual (N < D) and primal (N >= D) forms
def test_ridge_matches_the_float64_reference(n_per_class, dim):
    x, y = blobs(n_per_class, 6, dim, 4.0, 0)
    xt, _ = blobs(30, 6, dim, 4.0, 1)
    ref_scores = reference_lsr(x.astype(np.float64), y, xt.astype(np.float64), 6, 1024.0)
    preds = ridge_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), 6, 1024.0)
    np.testing.assert_array_equal(preds.numpy(), ref_scores.argmax(1))
    assert 0 < (preds.numpy() != preds.numpy()[0]).sum()  # not a constant prediction


def test_fewshot_eval_matches_reference_protocol():
    x, y = blobs(30, 5, 32, 8.0, 2)
    xt, yt = blobs(20, 5, 32, 8.0, 3)
    got = fewshot_eval(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt),
                       shots=(1, 5), seeds=(0, 1, 2))
    for k in (1, 5):
        accs = []
        for seed in (0, 1, 2):
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c in range(5)])
            accs.append((reference_lsr(x[idx].astype(np.float64), y[idx], xt.astype(np.float64), 5, 1024.0)
                         .argmax(1) == yt).mean())
        assert got[k] == pytest.approx(np.mean(accs), abs=1e-12)
    assert got[5] > got[1]


def test_separable_is_perfect_and_noise_is_chance():
    x, y = blobs(30, 4, 16, 0.01, 4)
    xt, yt = blobs(30, 4, 16, 0.01, 5)
    assert fewshot_eval(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt),
                        shots=(5,))[5] == 1.0
    rng = np.random.default_rng(5)
    noise = fewshot_eval(torch.from_numpy(rng.normal(size=(400, 32))), torch.from_numpy(np.arange(400) % 10),
                         torch.from_numpy(rng.normal(size=(2000, 32))), torch.from_numpy(np.arange(2000) % 10),
                         shots=(10,))[10]
    assert 0.05 < noise < 0.15


def test_too_many_shots_is_a_clear_error():
    x, y = blobs(3, 2, 4, 1.0, 0)
    with pytest.raises(ValueError, match=r"fewshot.shots=\[5\]"):
        fewshot_eval(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(x), torch.from_numpy(y), shots=(5,))
