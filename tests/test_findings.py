"""The study's findings on constructed tables with known answers: crossovers, gaps, gains, verdicts,
and what cannot be concluded."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mixer_scaling.analysis import figures
from mixer_scaling.analysis import findings as F
from mixer_scaling.analysis import results as R

# err = a·n^(-b) + c per family; Mixer's and BiT's curves cross at n = 1e5 exactly:
# 47.434·(1e5)^(-0.5) + 0.05 = 0.2 = 1.0·(1e5)^(-0.2) + 0.10
CURVES = {"mixer": (47.434164902525694, 0.5, 0.05), "vit": (10.0, 0.35, 0.08), "bit": (1.0, 0.2, 0.10)}
FLOPS = {"mixer": 1e9, "vit": 2e9, "bit": 4e9}
CROSSING = 1e5


def err(family: str, n, curves=CURVES) -> np.ndarray:
    a, b, c = curves[family]
    return a * np.asarray(n, dtype=float) ** (-b) + c


def make_table(sizes, seeds=(0, 1, 2), curves=CURVES, flops=FLOPS, noise=0.01) -> pd.DataFrame:
    """One model per family (size label ``s``) at each size and seed; accuracy 1 − err·(1 + noise·(seed − mid)),
    so the mean over symmetric seeds is exactly 1 − err."""
    rows, mid = [], (len(seeds) - 1) / 2
    for family in curves:
        for n in sizes:
            for s in seeds:
                acc = float(1.0 - err(family, n, curves) * (1 + noise * (s - mid)))
                rows.append(R.row_from_record({
                    "run_id": f"{family}-{n}-{s}", "status": "done", "model": f"{family}/s", "family": family,
                    "size": "s", "flops_per_image": flops[family], "fraction": n / 1e7, "train_size": int(n),
                    "examples_seen": 10_000_000, "seed": s, "throughput": 1e12 / flops[family],
                    "config": {"model": {"name": f"{family}/s"}, "data": {"fraction": n / 1e7}, "seed": s},
                    "metrics": {"val_top1": acc, "select_top1": acc, "fewshot": {"digits": {"5": acc}}},
                }))
    return R.to_frame(rows)


def findings_of(df: pd.DataFrame, n_boot: int = 200) -> dict:
    return figures.study(df, n_boot=n_boot).findings.data


def pick(items, **match) -> dict:
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


SIZES = np.round(np.logspace(4, 6, 5)).astype(int)  # 1e4 ... 1e6: the crossing (1e5) inside


@pytest.fixture(scope="module")
def known() -> dict:
    return findings_of(make_table(SIZES))


def test_the_known_crossover_is_found_within_the_measured_range(known):
    family = pick(known["crossovers"], families=["mixer", "bit"], kind="family_best")
    assert family["status"] == "within" and family["extrapolated"] is False
    assert family["crossing_x"] == pytest.approx(CROSSING, rel=0.02)
    assert family["direction"] == "Mixer overtakes BiT" and family["n_crossings"] == 1
    assert family["bootstrap_share"] > 0.95
    lo, hi = family["crossing_x_ci"]
    assert lo <= CROSSING <= hi
    pair = pick(known["crossovers"], families=["mixer", "bit"], kind="same_size")
    assert pair["a"] == "mixer/s" and pair["crossing_x"] == pytest.approx(CROSSING, rel=0.02)
    assert family["statement"].startswith("Mixer vs BiT (best fitted curve of each family): Mixer overtakes BiT at ")
    assert "within the measured range" in family["statement"]


def test_known_gaps_gains_and_exponents(known):
    small, large = float(SIZES[0]), float(SIZES[-1])
    assert known["sizes"] == [float(n) for n in SIZES] and known["seeds_per_cell"] == {"min": 3, "max": 3}
    for subset, n in (("smallest", small), ("largest", large)):
        for kind in ("same_size", "family_best"):
            g = pick(known["gaps"], families=["mixer", "bit"], kind=kind, subset=subset)
            truth = float(err("bit", n) - err("mixer", n))  # accuracy gap = error gap reversed
            assert g["x"] == n and g["gap"] == pytest.approx(truth, abs=1e-9)
            assert g["ci"][0] < g["gap"] < g["ci"][1] and g["ci_excludes_0"] is True
    flip = pick(known["ordering"], families=["mixer", "bit"], kind="family_best")
    assert flip["flips"] is True and flip["flip_supported"] is True
    assert flip["gap_smallest"] < 0 < flip["gap_largest"]
    mixer = pick(known["data_scaling"], line="mixer/s")
    assert mixer["gain"] == pytest.approx(float(err("mixer", small) - err("mixer", large)), abs=1e-9)
    assert mixer["gain_ci_excludes_0"] is True
    for family, (_, b, _) in CURVES.items():
        e = pick(known["data_scaling"], line=f"{family}/s")["exponent"]
        assert e["b"] == pytest.approx(b, abs=0.03) and e["b_ci"][0] <= b <= e["b_ci"][1]


def test_the_papers_findings_hold_where_they_were_built_to(known):
    one, two, three = known["paper_findings"]
    assert (one["id"], one["verdict"]) == (1, F.HOLDS)
    assert one["numbers"]["bit_minus_mixer"] > 0 and one["numbers"]["bit_minus_vit"] > 0
    assert (two["id"], two["verdict"]) == (2, F.HOLDS)
    assert two["numbers"]["gain_difference_ci"][0] > 0 and two["numbers"]["b_difference_ci"][0] > 0
    assert [p["verdict"] for p in two["parts"]] == [F.HOLDS, F.HOLDS]  # Mixer vs BiT, ViT vs BiT
    assert (three["id"], three["verdict"]) == (3, F.HOLDS) and three["numbers"]["bootstrap_share"] == 1.0
    compute = known["frontiers"]["compute"]
    assert compute["holders"] == ["mixer"] and compute["families"]["bit"]["on_frontier"] == 0
    assert known["limitations"] == []


def test_a_crossover_beyond_the_largest_size_is_labelled_extrapolated():
    sizes = np.round(np.logspace(3.5, 4.5, 5)).astype(int)  # largest ~31,623: the crossing is ~3.2x beyond
    data = findings_of(make_table(sizes, noise=0.002))
    c = pick(data["crossovers"], families=["mixer", "bit"], kind="family_best")
    assert c["status"] == "extrapolated" and c["extrapolated"] is True
    assert c["crossing_x"] == pytest.approx(CROSSING, rel=0.15)
    assert "beyond the measured range (extrapolated" in c["statement"]


def test_curves_that_never_cross_say_so():
    parallel = {"mixer": (1.0, 0.2, 0.15), "bit": (1.0, 0.2, 0.10)}
    data = findings_of(make_table(SIZES, curves=parallel))
    c = pick(data["crossovers"], families=["mixer", "bit"], kind="family_best")
    assert c["status"] == "none" and c["crossing_x"] is None
    assert "no crossover within the measured range" in c["statement"]
    flip = pick(data["ordering"], families=["mixer", "bit"], kind="family_best")
    assert flip["flips"] is False and flip["gap_smallest"] < 0 and flip["gap_largest"] < 0


def test_findings_that_do_not_hold_are_reported_as_such():
    # Mixer ahead at the smallest size, flat; BiT behind but gaining much more; Mixer 100x the compute
    curves = {"mixer": (0.3, 0.05, 0.0), "bit": (5.0, 0.3, 0.05)}
    data = findings_of(make_table(SIZES, curves=curves, flops={"mixer": 1e11, "bit": 1e9}))
    one, two, three = data["paper_findings"]
    assert one["verdict"] == F.FAILS and one["numbers"]["bit_minus_mixer_ci"][1] < 0
    assert two["verdict"] == F.FAILS and two["numbers"]["gain_difference_ci"][1] < 0
    assert three["verdict"] == F.FAILS and three["numbers"]["bootstrap_share"] == 0.0
    assert "no ViT runs: comparisons with ViT cannot be made" in data["limitations"]


def test_three_sizes_and_one_seed_cannot_be_concluded(tmp_path):
    df = make_table(SIZES[:3], seeds=(0,))
    rendered = figures.render(df, tmp_path / "f", n_boot=50)
    data = rendered.findings.data
    assert data["limitations"][:2] == [
        "3 data sizes (fewer than 4): a curve err = a·n^(-b) + c has 3 parameters, so exponents and where curves "
        "cross are not determined",
        "1 seed: no confidence interval; gains and gaps are not distinguishable from seed noise",
    ]
    assert [f["verdict"] for f in data["paper_findings"]] == [F.UNKNOWN] * 3
    assert all(g["ci"] is None and g["ci_excludes_0"] is None for g in data["gaps"])
    assert all(c["status"] == "undetermined" and c["crossing_x"] is None for c in data["crossovers"])
    assert all(m["gain_ci"] is None and m["exponent"] is None for m in data["data_scaling"])
    markdown = (tmp_path / "f" / "findings.md").read_text()
    assert "## What cannot be concluded" in markdown and "**cannot be concluded**" in markdown
    assert any(line.startswith("  cannot be concluded: 1 seed") for line in rendered.summary)


def test_gain_intervals_resample_runs_within_each_cell():
    """Two seeds per cell and many resamples: the interval's ends are the extreme resampled means,
    largest cell's lowest minus smallest cell's highest and the reverse."""
    rows = []
    for n, accs in ((10_000, (0.40, 0.42)), (30_000, (0.50, 0.52)), (100_000, (0.55, 0.56)), (300_000, (0.60, 0.64))):
        for s, acc in enumerate(accs):
            rows.append(R.row_from_record({
                "run_id": f"m{n}{s}", "status": "done", "model": "mixer/s", "family": "mixer", "size": "s",
                "flops_per_image": 1e9, "train_size": n, "fraction": n / 1e6, "examples_seen": 1e6, "seed": s,
                "throughput": 10.0, "metrics": {"val_top1": acc}}))
    data = findings_of(R.to_frame(rows), n_boot=4000)
    line = pick(data["data_scaling"], line="mixer/s")
    assert line["gain"] == pytest.approx(0.62 - 0.41)
    assert line["gain_ci"] == [pytest.approx(0.60 - 0.42), pytest.approx(0.64 - 0.40)]


def test_one_family_and_one_size_do_not_break_the_findings():
    df = make_table([50_000], seeds=(0,), curves={"mixer": CURVES["mixer"]})
    data = findings_of(df)
    assert data["gaps"] == [] and data["crossovers"] == [] and data["ordering"] == []
    assert [f["verdict"] for f in data["paper_findings"]] == [F.UNKNOWN] * 3
    assert data["paper_findings"][0]["why"].startswith("no BiT runs")
    assert data["paper_findings"][2]["why"].endswith("no other family is in the figure: nothing to be on a "
                                                     "frontier against")


def test_findings_json_is_numbers_and_deterministic(tmp_path):
    df = make_table(SIZES, seeds=(0, 1))
    a = figures.study(df, n_boot=100, seed=3).findings
    b = figures.study(df, n_boot=100, seed=3).findings
    assert a.write(tmp_path) == ["findings.md", "findings.json"]
    data = json.loads((tmp_path / "findings.json").read_text())
    assert data == json.loads(json.dumps(F._clean(b.data)))  # same bootstrap seed, same answers
    gap = data["gaps"][0]
    assert isinstance(gap["gap"], float) and all(isinstance(v, float) for v in gap["ci"])
    assert isinstance(data["crossovers"][0]["crossing_x"], float) and isinstance(data["n_sizes"], int)
    assert set(data) == {"metric", "x", "sizes", "n_sizes", "seeds_per_cell", "level", "n_boot", "bootstrap_seed",
                         "aggregation", "families", "limitations", "data_scaling", "gaps", "ordering", "crossovers",
                         "frontiers", "paper_findings"}
