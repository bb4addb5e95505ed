"""Config columns, one point per configuration, --best-over, and `figures --best-over` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_cmd
from mixer_scaling.analysis import aggregate as A
from mixer_scaling.analysis import figures
from mixer_scaling.analysis import results as R
from mixer_scaling.errors import EXIT_USAGE, UserError

SIZES = (10_000, 30_000, 100_000, 300_000)
MODELS = (("mixer/s16", "mixer", "s16"), ("vit/s16", "vit", "s16"), ("bit/r50x1", "bit", "r50x1"))


def record(i: int, model: str = "mixer/s16", family: str = "mixer", size: str = "s16", *, n: int = 100_000,
           seed: int = 0, acc: float = 0.5, select: float | None = None, lr: float = 1e-3, extra: dict | None = None,
           flops: float = 1e9, **metrics) -> dict:
    """A finished run's record whose config says model, data fraction, learning rate and seed."""
    config = {"model": {"name": model, "family": family}, "data": {"fraction": n / 1e6, "size": 1_000_000},
              "train": {"lr": lr, "log_every": 25}, "seed": seed, "runs_dir": "runs", "wandb": {"mode": "offline"}}
    for dotted, value in (extra or {}).items():
        group, key = dotted.split(".")
        config[group][key] = value
    return {
        "run_id": f"r{i:05d}", "status": "done", "model": model, "family": family, "size": size,
        "flops_per_image": flops, "fraction": n / 1e6, "train_size": n, "examples_seen": 1_000_000, "seed": seed,
        "throughput": 1e12 / flops, "device_hours": 1.0, "config": config,
        "metrics": {"val_top1": acc, "select_top1": acc if select is None else select,
                    "fewshot": {"digits": {"5": metrics.get("fewshot", acc)}}},
    }


def table(records) -> pd.DataFrame:
    return R.to_frame([R.row_from_record(r) for r in records])




# ----------------------------------------------------------------------------------------------
# Config columns


def test_config_columns_are_the_identity_flattened():
    rec = record(0, extra={"train.betas": [0.9, 0.999], "data.flip": False})
    rec["config"]["device"] = "auto"
    row = R.row_from_record(rec)
    config = {k: v for k, v in row.items() if "." in k}
    assert config == {"model.name": "mixer/s16", "model.family": "mixer", "data.fraction": 0.1,
                      "data.size": 1_000_000, "data.flip": False, "train.lr": 1e-3, "train.betas": "[0.9, 0.999]"}
    # no runs_dir, wandb, train.log_every, device; seed is the seed column
    assert row["select_top1"] == 0.5 and row["seed"] == 0
    assert R.config_row(None) == {} and R.config_row({}) == {}
    # an option at its neutral value is not in the identity, so not a column either
    assert "data.permutation" not in R.config_row({"data": {"permutation": None}})
    assert R.config_row({"data": {"permutation": "global"}})["data.permutation"] == "global"


def test_best_step_and_precision_come_from_the_record():
    rec = {**record(0), "best_step": 40, "precision": "bf16"}
    df = table([rec, record(1)])
    assert df.loc[0, "best_step"] == 40 and df.loc[0, "precision"] == "bf16"
    assert pd.isna(df.loc[1, "best_step"]) and pd.isna(df.loc[1, "precision"])


def test_config_columns_round_trip_through_parquet_and_csv(tmp_path):
    recs = [
        record(0, extra={"train.betas": [0.9, 0.999], "data.flip": False, "model.patch": 16}),
        record(1, extra={"train.betas": [0.9, 0.99], "data.flip": True, "model.patch": "auto"}),  # mixed kinds
        {**record(2), "config": None},  # an old record: no config
    ]
    df = table(recs)
    assert str(df["train.lr"].dtype) == "float64" and str(df["data.flip"].dtype) == "boolean"
    assert df["model.patch"].tolist()[:2] == ["16", "auto"] and pd.isna(df.loc[2, "model.patch"])
    R.write_table(df, tmp_path / "t.parquet", csv=tmp_path / "t.csv")
    pd.testing.assert_frame_equal(R.read_table(tmp_path / "t.parquet"), df)
    pd.testing.assert_frame_equal(R.read_table(tmp_path / "t.csv"), df, check_exact=False, rtol=1e-12)
    back = R.read_table(tmp_path / "t.csv")
    assert A.aggregate(back, "val_top1")["config_id"].nunique() == 3  # the three configurations survive


def test_wandb_rows_carry_the_config_columns():
    class Run:
        id, state, group, url = "w1", "finished", "g", "https://wandb.example/w1"
        config = {"model": {"value": {"name": "mixer/b16"}}, "data.fraction": 0.1, "train": {"lr": 3e-3},
                  "wandb": {"mode": "online"}, "seed": 2, "_wandb": {"cli_version": "0.21"}}
        summary_metrics = {"val_top1": 0.5, "select_top1": 0.52, "best_step": 7, "precision": "fp32",
                           "flops_per_image": 1e9}

    row = R.row_from_wandb(Run())
    assert row["model.name"] == "mixer/b16" and row["data.fraction"] == 0.1 and row["train.lr"] == 3e-3
    assert not any(k.startswith(("wandb", "_wandb")) for k in row)
    assert (row["select_top1"], row["best_step"], row["precision"], row["seed"]) == (0.52, 7, "fp32", 2)


# ----------------------------------------------------------------------------------------------
# One point per configuration


def test_seeds_are_averaged_with_a_student_t_interval():
    accs = [0.50, 0.55, 0.62]
    df = table([record(i, seed=i, acc=a) for i, a in enumerate(accs)] + [record(9, n=30_000, acc=0.4)])
    for level in (0.95, 0.9):
        out = A.aggregate(df, "val_top1", level=level).set_index("fraction")
        row = out.loc[0.1]
        mean, sem = np.mean(accs), stats.sem(accs)
        lo, hi = stats.t.interval(level, len(accs) - 1, loc=mean, scale=sem)
        assert row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(np.std(accs, ddof=1))
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
        single = out.loc[0.03]
        assert single["n_seeds"] == 1 and math.isnan(single["ci_low"]) and math.isnan(single["std"])
    assert out["aggregation"].iloc[0] == "mean of 1-3 seeds, 90% t-interval"


def test_two_learning_rates_are_never_one_point():
    recs = [record(i, seed=s, lr=lr, acc=a + 0.01 * s)
            for i, (lr, a, s) in enumerate((lr, a, s) for lr, a in ((1e-3, 0.5), (3e-3, 0.7)) for s in (0, 1))]
    df = table(recs)
    out = A.aggregate(df, "val_top1")
    assert sorted(out["train.lr"]) == [1e-3, 3e-3] and (out["n_seeds"] == 2).all()
    assert sorted(out["mean"].round(6)) == [0.505, 0.705]
    pts = figures.pareto_points(df, "pretrain_flops", "val_top1", "lower")
    assert sorted(pts["label"]) == ["mixer/s16 (train.lr=0.001)", "mixer/s16 (train.lr=0.003)"]
    scaling = figures.data_scaling_points(df, "train_size", "val_top1")
    assert sorted(scaling["line"]) == ["mixer/s16 (train.lr=0.001)", "mixer/s16 (train.lr=0.003)"]


def test_runs_differing_in_any_config_key_stay_apart():
    df = table([record(0, acc=0.6), record(1, acc=0.3, extra={"data.permutation": "global"}),
                record(2, acc=0.5, extra={"data.image_size": 64})])
    out = A.aggregate(df, "val_top1")
    assert len(out) == 3 and sorted(out["mean"]) == [0.3, 0.5, 0.6]


def test_runs_of_one_config_on_two_data_trees_are_two_points_not_seeds():
    """The data fingerprint (as in the run id) is a config column: another tree is another configuration,
    a moved copy of the same tree (same digest) is the same one."""
    def on(i, digest, seed, acc):
        return {**record(i, seed=seed, acc=acc), "data_fingerprint": {"data": {"kind": "imagefolder", "digest": digest}}}

    df = table([on(0, "aaaa", 0, 0.6), on(1, "aaaa", 1, 0.62), on(2, "bbbb", 0, 0.3), on(3, "bbbb", 1, 0.32)])
    assert sorted(df["data.fingerprint"]) == ["aaaa", "aaaa", "bbbb", "bbbb"]
    out = A.aggregate(df, "val_top1")
    assert len(out) == 2 and (out["n_seeds"] == 2).all() and sorted(out["mean"].round(6)) == [0.31, 0.61]


def test_compute_is_what_was_trained_not_the_budget():
    """1,500 examples asked for at batch 1,000 train 2 whole batches: 2,000 examples, and the FLOPs of
    2,000 (older records without ``examples_trained``: steps x batch size)."""
    new = {**record(0), "examples_seen": 1_500, "examples_trained": 2_000, "steps": 2, "batch_size": 1_000}
    old = {k: v for k, v in new.items() if k != "examples_trained"}
    bare = {k: v for k, v in old.items() if k not in ("steps", "batch_size")}
    df = table([new, old, bare])
    assert list(df["examples_seen"]) == [1_500] * 3
    assert list(df["examples_trained"]) == [2_000, 2_000, 1_500]
    assert list(df["pretrain_flops"]) == [3 * 1e9 * 2_000] * 2 + [3 * 1e9 * 1_500]
    assert df.loc[0, "epochs"] == 2_000 / 100_000


def test_a_table_without_config_falls_back_and_says_so():
    recs = [{**record(i, seed=i, acc=0.5 + 0.01 * i, lr=lr), "config": None} for i, lr in enumerate((1e-3, 3e-3))]
    df = table(recs)
    assert R.config_columns(df) == []
    out = A.aggregate(df, "val_top1")
    assert len(out) == 1 and out.loc[0, "n_seeds"] == 2  # nothing tells them apart: seeds of one point
    assert "no config columns: runs grouped by model, fraction and examples_seen" in out.loc[0, "aggregation"]
    with pytest.raises(UserError, match=r"--best-over 'train.lr' is not a config column of the table; "
                                        r"available: none \(the table's runs have no config\)"):
        A.aggregate(df, "val_top1", best_over=["train.lr"])


# ----------------------------------------------------------------------------------------------
# --best-over


def _lr_table() -> pd.DataFrame:
    """Two learning rates at two sizes: the reported metric favours 3e-3 at both, the selection
    metric 1e-3 at 10k examples and 3e-3 at 100k."""
    recs, i = [], 0
    for n, (good_select,) in ((10_000, (1e-3,)), (100_000, (3e-3,))):
        for lr in (1e-3, 3e-3):
            for s in (0, 1, 2):
                acc = (0.7 if lr == 3e-3 else 0.6) + 0.01 * s + (0.1 if n == 100_000 else 0.0)
                sel = (0.8 if lr == good_select else 0.5) + 0.01 * s
                recs.append(record(i, n=n, seed=s, lr=lr, acc=acc, select=sel))
                i += 1
    return table(recs)


def test_best_over_picks_by_the_selection_metric_not_the_reported_one():
    df = _lr_table()
    out = A.aggregate(df, "val_top1", best_over=["train.lr"]).set_index("train_size")
    assert "train.lr" not in out.columns
    assert out.loc[10_000, "chosen.train.lr"] == 1e-3  # val_top1 would have picked 3e-3
    assert out.loc[10_000, "mean"] == pytest.approx(0.61)  # and the reported number is 1e-3's
    assert out.loc[100_000, "chosen.train.lr"] == 3e-3 and out.loc[100_000, "mean"] == pytest.approx(0.81)
    assert (out["selected_by"] == "select_top1").all() and (out["n_candidates"] == 2).all()
    assert out.loc[10_000, "selection_mean"] == pytest.approx(0.81)
    assert out["aggregation"].iloc[0] == "mean of 3 seeds, 95% t-interval; best train.lr by select_top1"


def test_best_over_with_val_top1_selecting_for_a_few_shot_metric():
    df = _lr_table().drop(columns=["select_top1"])
    out = A.aggregate(df, "fewshot_digits_5", best_over=["train.lr"])
    assert (out["selected_by"] == "val_top1").all() and (out["chosen.train.lr"] == 3e-3).all()
    with pytest.raises(UserError, match="the table has no select_top1 values"):
        A.aggregate(df, "val_top1", best_over=["train.lr"])


def test_best_over_a_key_that_changes_the_flops_still_chooses():
    """data.image_size changes flops_per_image too; the choice is among configurations whose config
    differs only in the key, whatever follows from it."""
    recs = [record(i, seed=s, acc=0.6 + 0.1 * (px == 64), select=0.7 - 0.1 * (px == 64), flops=1e9 * (px / 32) ** 2,
                   extra={"data.image_size": px}) for i, (px, s) in enumerate((p, s) for p in (32, 64) for s in (0, 1))]
    out = A.aggregate(table(recs), "val_top1", best_over=["data.image_size"])
    assert len(out) == 1 and out.loc[0, "chosen.data.image_size"] == 32
    assert out.loc[0, "flops_per_image"] == 1e9 and out.loc[0, "mean"] == pytest.approx(0.6)


def test_best_over_with_nothing_to_choose_says_so():
    df = table([record(i, n=n, seed=s) for i, (n, s) in enumerate((n, s) for n in SIZES for s in (0, 1))])
    assert A.choose(df, "val_top1", best_over=["train.lr"]).idle
    assert not A.choose(_lr_table(), "val_top1", best_over=["train.lr"]).idle
    hints = figures.study(df, n_boot=0, best_over=["train.lr"]).hints
    assert hints == ["hint: --best-over train.lr chose nothing: no two configurations differ only in it"]


@pytest.mark.parametrize("kwargs, message", [
    ({"best_over": ["train.nope"]}, r"--best-over 'train.nope' is not a config column of the table; available: "
                                    r"data.fraction, data.size, model.family, model.name, train.lr"),
    ({"best_over": ["seed"]}, "--best-over seed: seeds are averaged, never selected"),
    ({"best_over": ["train.lr"], "select": "val_top1"},
     "--select val_top1 is the reported metric val_top1"),
    ({"best_over": ["train.lr"], "select": "throughput"}, "--select 'throughput' is not an accuracy column"),
    ({"select": "select_top1"}, "--select select_top1 chooses among the values of a --best-over key"),
    ({"level": 1.5}, r"level=1.5 is outside \(0, 1\)"),
])
def test_bad_choices_are_one_line_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message) as err:
        A.aggregate(_lr_table(), "val_top1", **kwargs)
    assert "\n" not in str(err.value)


def test_selecting_on_the_reported_few_shot_set_is_refused():
    with pytest.raises(UserError, match="--select fewshot_digits_5 is the reported metric fewshot_digits_5"):
        A.aggregate(_lr_table(), "fewshot_digits_5", best_over=["train.lr"], select="fewshot_digits_5")
    df = _lr_table().assign(fewshot_digits_10=0.5)
    with pytest.raises(UserError, match="both evaluate few-shot set 'digits'"):
        A.aggregate(df, "fewshot_digits_5", best_over=["train.lr"], select="fewshot_digits_10")


def test_a_choice_without_selection_values_is_refused():
    df = _lr_table()
    df.loc[df["train_size"] == 10_000, "select_top1"] = np.nan
    with pytest.raises(UserError, match="select_top1 has no values for the 2 configurations of model=mixer/s16"):
        A.aggregate(df, "val_top1", best_over=["train.lr"])


# ----------------------------------------------------------------------------------------------
# figures --best-over, end to end


@pytest.fixture(scope="module")
def lr_runs(tmp_path_factory) -> Path:
    """Three families × 4 sizes × 2 learning rates × 2 seeds: 1e-3 is best on select_top1 (and a
    little worse on the reported metrics), 3e-3 best on the reported metrics."""
    recs, i = [], 0
    for model, family, size in MODELS:
        for j, n in enumerate(SIZES):
            for lr in (1e-3, 3e-3):
                for s in (0, 1):
                    acc = 0.4 + 0.1 * j + (0.02 if lr == 3e-3 else 0.0) + 0.005 * s
                    sel = acc + (0.1 if lr == 1e-3 else 0.0)
                    recs.append(record(i, model, family, size, n=n, seed=s, lr=lr, acc=acc, select=sel,
                                       flops={"mixer": 1e9, "vit": 2e9, "bit": 4e9}[family]))
                    i += 1
    return R.write_records(recs, tmp_path_factory.mktemp("lr") / "runs")


def test_figures_best_over_end_to_end(lr_runs, tmp_path, capsys):
    assert run_cmd(["figures", str(lr_runs), "-o", str(tmp_path / "f"), "--best-over", "train.lr", "--boot", "20"]) == 0
    printed = capsys.readouterr().out
    assert "best train.lr by select_top1" in printed and "hint:" not in printed
    scaling = pd.read_csv(tmp_path / "f" / "data_scaling.csv")
    assert len(scaling) == 12 and sorted(scaling["line"].unique()) == sorted(m for m, _, _ in MODELS)
    assert (scaling["chosen.train.lr"] == 1e-3).all() and (scaling["selected_by"] == "select_top1").all()
    assert (scaling["n_seeds"] == 2).all() and scaling["ci_low"].notna().all()
    assert (scaling["aggregation"] == "mean of 2 seeds, 95% t-interval; best train.lr by select_top1").all()
    compute = pd.read_csv(tmp_path / "f" / "pareto_compute.csv")
    assert len(compute) == 12 and (compute["chosen.train.lr"] == 1e-3).all()
    assert {"model.name", "data.fraction", "n_seeds", "ci_low", "ci_high"} <= set(compute.columns)
    fits = pd.read_csv(tmp_path / "f" / "fits.csv")
    assert set(fits["label"]) >= {f"data_scaling/{m}" for m, _, _ in MODELS}
    found = json.loads((tmp_path / "f" / "findings.json").read_text())
    assert found["aggregation"] == "mean of 2 seeds, 95% t-interval; best train.lr by select_top1"
    assert "# Findings" in printed and (tmp_path / "f" / "findings.md").read_text() in printed


def test_figures_without_best_over_draws_each_learning_rate_and_hints(lr_runs, tmp_path, capsys):
    assert run_cmd(["figures", str(lr_runs), "-o", str(tmp_path / "f"), "--boot", "0"]) == 0
    printed = capsys.readouterr().out
    assert ("hint: bit/r50x1, mixer/s16, vit/s16 have several configurations at one data size, differing in "
            "train.lr: drawn separately, not averaged; --best-over train.lr keeps the best by select_top1") in printed
    scaling = pd.read_csv(tmp_path / "f" / "data_scaling.csv")
    assert sorted(scaling["line"].unique()) == sorted(f"{m} (train.lr={lr})" for m, _, _ in MODELS
                                                      for lr in ("0.001", "0.003"))
    assert len(scaling) == 24 and (scaling["n_seeds"] == 2).all()


@pytest.mark.parametrize("argv, message", [
    (["--best-over", "train.nope"], "--best-over 'train.nope' is not a config column of the table; available: "),
    (["--best-over", "train.lr", "--select", "val_top1"], "--select val_top1 is the reported metric val_top1"),
    (["--select", "select_top1"], "chooses among the values of a --best-over key"),
    (["--boot", "-1"], "--boot -1 is negative"),
])
def test_figures_bad_choices_exit_2_and_write_nothing(lr_runs, tmp_path, capsys, argv, message):
    assert run_cmd(["figures", str(lr_runs), "-o", str(tmp_path / "out" / "f"), *argv]) == EXIT_USAGE
    out = capsys.readouterr().out.strip()
    assert out.startswith("error: ") and message in out and "\n" not in out
    assert not (tmp_path / "out").exists()


def test_best_over_is_refused_for_the_papers_tables(tmp_path, capsys):
    assert run_cmd(["figures", "paper", "-o", str(tmp_path / "p"), "--best-over", "train.lr"]) == EXIT_USAGE
    assert "the paper's tables have one row per model" in capsys.readouterr().out
    assert not (tmp_path / "p").exists()
