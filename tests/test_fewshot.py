"""The linear few-shot evaluator against an independent numpy float64 reference of big_vision's fewshot_lsr."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixer_scaling.evaluate import fewshot_accuracies, fewshot_eval, fewshot_indices, ridge_fit, ridge_predict


def reference_scores(x, y, x_test, num_classes, l2):
    """Ridge as an augmented least-squares problem, min |X w - T|^2 + l2 |w|^2 solved by lstsq on
    [X; sqrt(l2) I] w = [T; 0]: a different route to big_vision's solution (which uses eigh)."""
    x, x_test = np.asarray(x, np.float64), np.asarray(x_test, np.float64)
    mean = x.mean(axis=0)
    std = np.sqrt(((x - mean) ** 2).mean(axis=0)) + 1e-5
    feats = np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])
    test = np.hstack([(x_test - mean) / std, np.full((len(x_test), 1), 100.0)])
    targets = -np.ones((len(x), num_classes))
    targets[np.arange(len(x)), y] = 1.0
    d = feats.shape[1]
    a = np.vstack([feats, np.sqrt(l2) * np.eye(d)])
    b = np.vstack([targets, np.zeros((d, num_classes))])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    return test @ w


def reference_fewshot(x, y, xt, yt, shots, seeds, l2, num_classes):
    out = {}
    for k in shots:
        accs = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            perms = [rng.permutation(np.nonzero(y == c)[0]) for c in range(num_classes)]
            # big_vision draws the permutations once per seed, then takes the first k for every k
            idx = np.concatenate([p[:k] for p in perms])
            accs.append(np.mean(reference_scores(x[idx], y[idx], xt, num_classes, l2).argmax(1) == yt))
        out[k] = float(np.mean(accs))
    return out


def gaussian_classes(n_per_class, num_classes, dim, spread, seed, centre_seed=99):
    centres = np.random.default_rng(centre_seed).normal(size=(num_classes, dim)) * 2.0
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim)) * spread + 5.0  # an offset the standardisation removes
    return x.astype(np.float32), y


@pytest.mark.parametrize("n_per_class,dim", [(3, 40), (30, 8)])  # dual (N < D + 1) and primal (N >= D + 1)
def test_ridge_predictions_match_reference(n_per_class, dim):
    x, y = gaussian_classes(n_per_class, 7, dim, 2.5, 0)
    xt, _ = gaussian_classes(40, 7, dim, 2.5, 1)
    scores = reference_scores(x, y, xt, 7, 1024.0)
    pred = ridge_predict(x, y, xt, 7, 1024.0)
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int64
    np.testing.assert_array_equal(pred, scores.argmax(1))
    assert len(np.unique(pred)) > 3  # a real prediction, not a constant
    w, mean, std = ridge_fit(x, y, 7, 1024.0)
    test = np.hstack([(xt - mean) / std, np.full((len(xt), 1), 100.0)])
    np.testing.assert_allclose(test @ w, scores, rtol=1e-7, atol=1e-9)
    tpred = ridge_predict(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), 7, 1024.0)
    assert torch.is_tensor(tpred) and tpred.tolist() == pred.tolist()


def test_small_l2_reg_changes_the_answer():
    x, y = gaussian_classes(3, 5, 30, 3.0, 2)
    xt, _ = gaussian_classes(50, 5, 30, 3.0, 3)
    for l2 in (1e-3, 1.0, 1024.0, 1e6):
        np.testing.assert_array_equal(ridge_predict(x, y, xt, 5, l2), reference_scores(x, y, xt, 5, l2).argmax(1))


def test_fewshot_eval_matches_reference_protocol():
    x, y = gaussian_classes(30, 6, 24, 3.0, 4)
    xt, yt = gaussian_classes(25, 6, 24, 3.0, 5)
    shots, seeds = (1, 5, 10, 25), (0, 1, 2)
    got = fewshot_eval(x, y, xt, yt, shots=shots, seeds=seeds, l2_reg=1024.0)
    ref = reference_fewshot(x, y, xt, yt, shots, seeds, 1024.0, 6)
    assert list(got) == list(shots)
    for k in shots:
        assert got[k] == pytest.approx(ref[k], abs=1e-12)
    assert 1 / 6 < got[1] < got[25] < 1.0  # more shots help on an overlapping problem
    per_seed = fewshot_accuracies(x, y, xt, yt, shots=(1,), seeds=seeds)
    assert len(per_seed[1]) == 3 and np.mean(per_seed[1]) == pytest.approx(got[1])
    assert len(set(per_seed[1])) > 1  # the seeds draw different shots


def test_separable_is_perfect_and_random_is_chance():
    x, y = gaussian_classes(30, 10, 16, 0.05, 6)
    xt, yt = gaussian_classes(30, 10, 16, 0.05, 7)
    assert fewshot_eval(x, y, xt, yt, shots=(1, 5)) == {1: 1.0, 5: 1.0}
    rng = np.random.default_rng(8)
    noise = fewshot_eval(rng.normal(size=(500, 32)), np.arange(500) % 10, rng.normal(size=(3000, 32)),
                         np.arange(3000) % 10, shots=(1, 10, 25))
    for k, acc in noise.items():
        assert 0.06 < acc < 0.14, (k, acc)


def test_standardisation_makes_it_invariant_to_feature_affine_maps():
    x, y = gaussian_classes(12, 5, 20, 2.0, 9)
    xt, yt = gaussian_classes(30, 5, 20, 2.0, 10)
    scale = np.random.default_rng(0).uniform(0.5, 50.0, size=20)
    a = fewshot_eval(x, y, xt, yt, shots=(1, 5, 10))
    b = fewshot_eval(x * scale - 7.0, y, xt * scale - 7.0, yt, shots=(1, 5, 10))
    assert a == pytest.approx(b, abs=0.01)  # the 1e-5 added to the std is the only non-invariant part


def test_deterministic_and_input_types_agree():
    x, y = gaussian_classes(20, 4, 12, 2.0, 11)
    xt, yt = gaussian_classes(20, 4, 12, 2.0, 12)
    first = fewshot_eval(x, y, xt, yt, shots=(1, 5))
    assert fewshot_eval(x, y, xt, yt, shots=(1, 5)) == first
    as_torch = fewshot_eval(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xt), torch.from_numpy(yt),
                            shots=(1, 5))
    as_lists = fewshot_eval(x.tolist(), y.tolist(), xt.tolist(), yt.tolist(), shots=(1, 5))
    as_bf16 = fewshot_eval(torch.from_numpy(x).bfloat16(), y, torch.from_numpy(xt).bfloat16(), yt, shots=(1, 5))
    assert as_torch == first and as_lists == first and set(as_bf16) == {1, 5}


def test_shots_are_nested_within_a_seed_and_per_class():
    y = np.repeat(np.arange(4), 9)
    draws = fewshot_indices(y, (1, 5, 9), seed=3, num_classes=4)
    assert set(draws[1]) <= set(draws[5]) <= set(draws[9]) == set(range(36))
    assert np.bincount(y[draws[5]]).tolist() == [5] * 4
    assert draws[5].tolist() == fewshot_indices(y, (5,), seed=3, num_classes=4)[5].tolist()


def test_too_few_pool_examples_names_k():
    x, y = gaussian_classes(4, 3, 5, 1.0, 13)
    y[0] = 1  # class 0 keeps 3 examples
    with pytest.raises(ValueError, match=r"k=4 needs 4 pool examples per class, but class 0 has 3"):
        fewshot_eval(x, y, x, y, shots=(1, 4))
    with pytest.raises(ValueError, match=r"k=0"):
        fewshot_eval(x, y, x, y, shots=(0,))
    with pytest.raises(ValueError, match="features"):
        fewshot_eval(x, y, x[:, :2], y, shots=(1,))
