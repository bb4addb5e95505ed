"""Results table, paper reference, fits, figures, the collect/figures commands and the notebook."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cmd
from mixer_scaling.analysis import figures, fits, reference
from mixer_scaling.analysis import results as R
from mixer_scaling.errors import EXIT_USAGE, UserError

ROOT = Path(__file__).resolve().parents[1]
FIGURE_STEMS = ("pareto_compute", "pareto_throughput", "data_scaling", "overlay_compute", "overlay_throughput")
PAPER_STEMS = ("paper_table3_jft_compute", "paper_table3_jft_throughput", "paper_table2_compute",
               "paper_table2_throughput")


# ----------------------------------------------------------------------------------------------
# Helpers


def record(run_id: str, status: str = "done", **kw) -> dict:
    rec = {
        "run_id": run_id, "status": status, "study": "t", "model": "mixer/tiny", "family": "mixer",
        "size": "tiny", "patch": 4, "params": 1000, "flops_per_image": 2.0e6, "fraction": 1.0,
        "train_size": 2000, "full_size": 2000, "examples_seen": 1024, "epochs": 0.512, "seed": 0,
        "device_hours": 0.01, "throughput": 500.0,
        "metrics": {"val_top1": 0.5, "fewshot": {"digits": {"1": 0.3, "5": 0.6}}} if status == "done" else {},
    }
    rec.update(kw)
    return rec


def write(run_dir: Path, payload) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "result.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory) -> Path:
    """112 synthetic runs (7 models × 4 fractions × 4 seeds), a few failed or still running."""
    runs = tmp_path_factory.mktemp("synthetic") / "runs"
    R.write_records(R.synthetic_records(112, seed=0, statuses={"failed": 0.05, "running": 0.05}), runs)
    return runs


@pytest.fixture(scope="module")
def synthetic_table(synthetic_runs) -> tuple[pd.DataFrame, R.Summary]:
    return R.collect(synthetic_runs)




def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------
# Collect


def test_collect_counts_every_status_and_skips_unreadable_records(tmp_path):
    runs = tmp_path / "runs"
    write(runs / "a", record("a"))
    write(runs / "b", record("b", seed=1))
    write(runs / "f", record("f", "failed", error={"type": "RuntimeError", "message": "x", "traceback": ""}))
    write(runs / "r", record("r", "running"))
    write(runs / "i", record("i", "interrupted"))
    write(runs / "truncated", json.dumps(record("t"))[:40])
    write(runs / "empty", "")
    write(runs / "list", "[1, 2]")
    write(runs / "nested" / "study2" / "c", record("c", model="vit/tiny", family="vit"))
    write(runs / "a" / "wandb" / "x", record("inside-a-run-dir"))  # never searched
    (runs / "a" / ".result.json.123.tmp").write_text("{")  # an atomic write's temp file: ignored

    df, summary = R.collect(runs)
    assert (summary.done, summary.failed, summary.running, summary.interrupted) == (3, 1, 1, 1)
    assert len(summary.skipped) == 3 and summary.total == 9
    assert summary.line == "9 runs: 3 done, 1 failed, 2 running/interrupted, 3 unreadable records skipped"
    assert {Path(p).parent.name for p, _ in summary.skipped} == {"truncated", "empty", "list"}
    # every readable run is a row, whatever its status; figures take the done ones
    assert sorted(df["run_id"]) == ["a", "b", "c", "f", "i", "r"]
    assert sorted(R.done_runs(df)["run_id"]) == ["a", "b", "c"]
    assert list(df.columns[: len(R.COLUMNS)]) == R.COLUMNS
    assert {"fewshot_digits_1", "fewshot_digits_5"} <= set(df.columns)


def test_rows_carry_the_record_fields_and_total_flops(tmp_path):
    write(tmp_path / "runs" / "x", record("x", flops_per_image=5.0e9, examples_seen=3000, train_size=1000,
                                          epochs=None, patch=None, model="bit/tiny", family="bit",
                                          metrics={"val_top1": 0.25, "fewshot": {
                                              "synthetic_heldout": {"5": 0.4, "10": 0.5}}}))
    df, _ = R.collect([tmp_path / "runs"])
    row = df.iloc[0]
    assert row["pretrain_flops"] == 3 * 5.0e9 * 3000
    assert row["epochs"] == 3.0 and pd.isna(row["patch"]) and row["val_top1"] == 0.25
    assert row["fewshot_synthetic_heldout_10"] == 0.5
    assert R.parse_fewshot_column("fewshot_synthetic_heldout_10") == ("synthetic_heldout", 10)
    assert row["run_dir"] == str((tmp_path / "runs" / "x").resolve())


def test_parquet_and_csv_round_trip(synthetic_table, tmp_path):
    df, _ = synthetic_table
    written = R.write_table(df, tmp_path / "out" / "results.parquet", csv=tmp_path / "out" / "results.csv")
    assert [p.name for p in written] == ["results.parquet", "results.csv"]
    assert sorted(os.listdir(tmp_path / "out")) == ["results.csv", "results.parquet"]  # no temp files left
    pd.testing.assert_frame_equal(R.read_table(tmp_path / "out" / "results.parquet"), df)
    pd.testing.assert_frame_equal(R.read_table(tmp_path / "out" / "results.csv"), df, check_exact=False, rtol=1e-12)


class FakeRun:
    def __init__(self, i: int, state: str = "finished", job_type: str = "pretrain"):
        self.id, self.state, self.group, self.url = f"w{i}", state, "sweep", f"https://wandb.example/w{i}"
        self.job_type = job_type
        self.config = {"model": {"name": "mixer/b16"}, "data": {"fraction": 0.1, "image_size": 224},
                       "train": {"examples_seen": 1000}, "seed": i, "study": "sweep"}
        self.summary_metrics = {"val_top1": 0.5, "throughput": 10.0, "device_hours": 1.0, "params": 5,
                                "flops_per_image": 2.0e9, "fewshot/digits/5shot": 0.7}


class FakeApi:
    """Lists runs a page at a time; the first listing hits a rate limit halfway through."""

    def __init__(self, n: int, rate_limited: bool = True, missing: bool = False, analysis: bool = False):
        self.n, self.rate_limited, self.missing, self.calls = n, rate_limited, missing, []
        self.analysis = analysis  # the study's `figures --wandb` run is in the project too

    def runs(self, path, filters=None, per_page=50, lazy=True):
        self.calls.append((path, filters, per_page, lazy))
        if self.missing:
            raise ValueError(f"Could not find project {path}")
        for i in range(self.n):
            if self.rate_limited and i == self.n // 2:
                self.rate_limited = False
                raise RuntimeError("HTTP 429: Too Many Requests")
            yield FakeRun(i, "finished" if i else "crashed")
        if self.analysis:
            yield FakeRun(self.n, job_type="analysis")


def test_collect_wandb_pages_retries_and_maps_summaries():
    api, waits = FakeApi(7), []
    df = R.collect_wandb("me/proj", group="sweep", api=api, per_page=3, sleep=waits.append)
    assert len(df) == 7 and len(waits) == 1 and len(api.calls) == 2
    assert api.calls[0] == ("me/proj", {"group": "sweep"}, 3, False)  # config+summary in the page, no history
    row = df.set_index("run_id").loc["w1"]
    assert row["model"] == "mixer/b16" and row["family"] == "mixer" and row["patch"] == 16
    assert row["pretrain_flops"] == 3 * 2.0e9 * 1000 and row["fewshot_digits_5"] == 0.7
    assert df.set_index("run_id").loc["w0", "status"] == "failed"
    assert R.Summary.of_table(df).line == "7 runs: 6 done, 1 failed, 0 running/interrupted, 0 unreadable records skipped"


def test_collect_wandb_leaves_out_the_studys_analysis_run():
    df = R.collect_wandb("me/proj", group="sweep", api=FakeApi(4, rate_limited=False, analysis=True))
    assert sorted(df["run_id"]) == ["w0", "w1", "w2", "w3"]


def test_collect_wandb_bad_projects_are_one_line_user_errors(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="is not ENTITY/PROJECT"):
        R.collect_wandb("just-a-project")
    with pytest.raises(UserError, match="cannot read W&B project me/nope: Could not find project"):
        R.collect_wandb("me/nope", api=FakeApi(3, missing=True))
    with pytest.raises(UserError, match="has no runs"):
        R.collect_wandb("me/empty", api=FakeApi(0))
    # the real client, with no credentials (and no network): one line, quickly
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.raises(UserError) as err:
        R.collect_wandb("nobody/nothing")
    assert str(err.value).startswith("cannot read W&B project nobody/nothing: ") and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# Pareto frontiers, the paper's numbers


def test_pareto_mask():
    x = [1, 2, 2, 3, 4, np.nan]
    y = [0.5, 0.4, 0.6, 0.6, 0.9, 1.0]
    assert figures.pareto_mask(x, y, "lower").tolist() == [True, False, True, False, True, False]
    assert figures.pareto_mask(x, y, "higher").tolist() == [False, False, False, False, True, False]


def test_table3_frontiers_are_the_ones_the_paper_shows():
    t3 = reference.paper_results(3, reference.JFT)
    assert len(t3) == 17 and set(t3["family"]) == {"mixer", "vit", "bit"}
    assert t3.set_index("label").loc["Mixer-L/16 448px 14ep", "core_days"] == 450

    compute = figures.pareto_points(t3, "core_days", "val_top1", "lower")
    on = set(compute.loc[compute["on_frontier"], "label"])
    # Mixer makes the accuracy–compute frontier up to L/16 at 448 px; ViT-L/16 at 512 px tops it; no BiT.
    assert on == {"Mixer-S/32", "Mixer-S/16", "Mixer-B/32", "Mixer-B/16", "Mixer-L/32", "Mixer-L/16 7ep",
                  "Mixer-L/16 448px 14ep", "ViT-L/16 512px"}

    speed = figures.pareto_points(t3, "throughput", "val_top1", "higher")
    on = set(speed.loc[speed["on_frontier"], "label"])
    # Accuracy–throughput: Mixer and ViT share it (ViT-H/14 is beaten on both axes by Mixer-L/16 at 448 px); no BiT.
    assert on == {"Mixer-S/32", "Mixer-B/32", "Mixer-B/16", "Mixer-L/32", "Mixer-L/16 14ep", "ViT-L/16",
                  "Mixer-H/14", "Mixer-L/16 448px 14ep", "ViT-L/16 512px"}

    t2 = reference.paper_results(2, None)
    speed2 = figures.pareto_points(t2, "throughput", "val_top1", "higher")
    assert set(speed2.loc[speed2["on_frontier"], "label"]) == {"HaloNet", "NFNet-F4+"}


def test_paper_figures_render_with_their_csvs(tmp_path):
    out = figures.render_paper(tmp_path / "paper", n_boot=50)
    names = {p.name for p in all_files(tmp_path / "paper")}
    assert names == {f"{s}.{e}" for s in PAPER_STEMS for e in ("png", "pdf", "csv")} | {"fits.csv"}
    assert set(out.files) == set(all_files(tmp_path / "paper"))
    points = pd.read_csv(tmp_path / "paper" / "paper_table3_jft_compute.csv")
    assert {"label", "family", "x", "y", "on_frontier"} <= set(points.columns) and len(points) == 17
    fits_csv = pd.read_csv(tmp_path / "paper" / "fits.csv")
    assert "paper_table3_jft/compute_frontier" in set(fits_csv["label"])
    assert any("Mixer 7, ViT 1" in line for line in out.summary)


def test_paper_script_regenerates_the_reference_figures(tmp_path):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["paper_figures.py", "-o", str(tmp_path / "figs"), "--boot", "20"]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(ROOT / "analysis" / "paper_figures.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert done.value.code == 0
    assert {f"{s}.png" for s in PAPER_STEMS} <= {p.name for p in all_files(tmp_path / "figs")}


# ----------------------------------------------------------------------------------------------
# Fits


def test_fit_recovers_known_parameters_and_the_interval_covers_them():
    rng = np.random.default_rng(0)
    a, b, c = 5.0, 0.4, 0.1
    n = np.repeat(np.logspace(3, 7, 8), 5)  # 8 data sizes × 5 seeds
    err = (a * n ** -b + c) * np.exp(rng.normal(0, 0.03, n.size))
    fit = fits.fit_power_law(n, err, n_boot=300, seed=0)
    assert fit.method == "stratified" and len(fit.samples) == 300
    assert fit.a == pytest.approx(a, rel=0.25) and fit.b == pytest.approx(b, abs=0.03)
    assert fit.c == pytest.approx(c, abs=0.01)
    for name, truth in zip("abc", (a, b, c)):
        lo, hi = fit.ci[name]
        assert lo <= truth <= hi, (name, lo, truth, hi)
    lo, hi = fit.band([1e3, 1e8])
    assert np.all(lo < fit.predict([1e3, 1e8])) and np.all(fit.predict([1e3, 1e8]) < hi)

    # one run per size (e.g. a compute frontier), x in FLOPs: residual bootstrap, still recovered
    x = np.logspace(17, 22, 10)
    err = (2e3 * x ** -0.2 + 0.05) * np.exp(rng.normal(0, 0.01, x.size))
    fit = fits.fit_power_law(x, err, n_boot=200, seed=1)
    assert fit.method == "residual" and fit.b == pytest.approx(0.2, abs=0.03)
    assert fit.ci["b"][0] <= 0.2 <= fit.ci["b"][1] and fit.ci["c"][0] <= 0.05 <= fit.ci["c"][1]


def test_fit_needs_three_sizes():
    with pytest.raises(UserError, match="at least 3 distinct x values"):
        fits.fit_power_law([1, 1, 2], [0.5, 0.4, 0.3])
    exact = fits.fit_power_law([1, 2, 4], [0.5, 0.4, 0.35])
    assert exact.method == "none" and np.isnan(exact.ci["b"][0])


# ----------------------------------------------------------------------------------------------
# Figures from results


def test_every_figure_kind_renders_from_results(synthetic_table, tmp_path):
    df, summary = synthetic_table
    out = figures.render(df, tmp_path / "figs", overlay_paper=True, summary=summary, n_boot=50)
    names = {p.name for p in all_files(tmp_path / "figs")}
    assert names == ({f"{s}.{e}" for s in FIGURE_STEMS for e in ("png", "pdf", "csv")}
                     | {"fits.csv", "findings.md", "findings.json", "dashboard.html"})
    assert all(p.stat().st_size > 1000 for p in out.figures)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging folder gone

    scaling = pd.read_csv(tmp_path / "figs" / "data_scaling.csv")
    assert set(scaling["model"]) == {m[0] for m in R.SYNTHETIC_MODELS}
    assert scaling.groupby("model")["x"].nunique().eq(4).all() and (scaling["n_seeds"] > 1).all()
    assert (scaling["ci_low"] < scaling["mean"]).all() and (scaling["mean"] < scaling["ci_high"]).all()
    compute = pd.read_csv(tmp_path / "figs" / "pareto_compute.csv")
    assert compute["on_frontier"].any() and compute["n_seeds"].sum() == summary.done
    assert {"train.lr", "model.name", "data.fraction", "aggregation"} <= set(compute.columns)
    overlay = pd.read_csv(tmp_path / "figs" / "overlay_throughput.csv")
    assert set(overlay["source"]) == {"ours", "paper"}

    table = pd.read_csv(tmp_path / "figs" / "fits.csv")
    scaling_fits = table[table["label"].str.startswith("data_scaling/")].set_index("label")
    assert len(scaling_fits) == 7 and (scaling_fits["b"] > 0).all()
    # the synthetic Mixers gain more from data than the baselines, as in the paper
    assert scaling_fits.loc["data_scaling/mixer/l16", "b"] > scaling_fits.loc["data_scaling/bit/r152x2", "b"]
    assert out.summary[0].startswith(f"{summary.line}; figures use the {summary.done} done runs")
    assert any(line.startswith("data scaling (fewshot_digits_5 vs train_size)") for line in out.summary)


def test_figure_options(synthetic_table, tmp_path):
    df, _ = synthetic_table
    out = figures.render(df, tmp_path / "a", metric="fewshot", k=10, dataset="synthetic_heldout",
                         compute="device_hours", n_boot=0)
    assert any("fewshot_synthetic_heldout_10 vs device_hours" in line for line in out.summary)
    out = figures.render(df, tmp_path / "b", metric="val_top1", n_boot=0)
    assert any(line.startswith("data scaling (val_top1") for line in out.summary)


def test_cli_collect_then_figures(synthetic_runs, tmp_path, capsys):
    table = tmp_path / "results.parquet"
    assert run_cmd(["collect", str(synthetic_runs), "-o", str(table), "--csv", str(tmp_path / "results.csv")]) == 0
    printed = capsys.readouterr().out
    assert "112 runs:" in printed and table.exists() and (tmp_path / "results.csv").exists()
    for source in (str(table), str(synthetic_runs)):
        assert run_cmd(["figures", source, "-o", str(tmp_path / "f"), "--k", "5", "--boot", "20"]) == 0
        printed = capsys.readouterr().out
        assert str(tmp_path / "f" / "pareto_compute.png") in printed and "compute frontier" in printed
    assert run_cmd(["figures", "paper", "-o", str(tmp_path / "p"), "--boot", "20"]) == 0
    assert "Mixer-L/16 448px 14ep" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Bad input: one line, and no files left behind


def _bad_tables(synthetic_table) -> dict[str, tuple[pd.DataFrame, dict, str]]:
    df, _ = synthetic_table
    nan_metric = df.assign(val_top1=np.nan)
    not_done = df.assign(status="failed")
    return {
        "empty table": (df.iloc[:0], {}, "results table has no runs"),
        "missing columns": (df.drop(columns=["family"]), {}, "missing columns: family"),
        "all-NaN metric": (nan_metric, {}, "metric val_top1 has no values"),
        "unknown metric": (df, {"metric": "top5"}, "unknown metric 'top5'"),
        "unknown k": (df, {"metric": "fewshot", "k": 7}, "k=7 is not available for few-shot dataset 'digits'; "
                                                           "available: 1, 5, 10, 25"),
        "unknown dataset": (df, {"metric": "fewshot", "dataset": "cifar"}, "few-shot dataset 'cifar' is not"),
        "unknown compute": (df, {"compute": "joules"}, "unknown compute axis 'joules'"),
        "no done runs": (not_done, {}, "no finished runs to draw"),
    }


@pytest.mark.parametrize("case", ["empty table", "missing columns", "all-NaN metric", "unknown metric", "unknown k",
                                  "unknown dataset", "unknown compute", "no done runs"])
def test_bad_tables_raise_one_line_and_write_nothing(synthetic_table, tmp_path, case):
    df, kw, message = _bad_tables(synthetic_table)[case]
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as err:
        figures.render(df, tmp_path / "new" / "figs", n_boot=0, **kw)
    assert "\n" not in str(err.value)
    assert all_files(tmp_path) == [] and not (tmp_path / "new").exists()


def test_bad_sources_on_the_command_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    pd.DataFrame({"model": ["x"]}).to_parquet(tmp_path / "cols.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    cases = {
        ("collect", str(tmp_path / "missing")): "runs directory",
        ("collect", str(tmp_path / "empty")): "no result.json found under",
        ("collect", str(tmp_path / "cols.parquet")): "is a file, not a runs directory",
        ("collect",): "collect needs a runs directory or --wandb",
        ("collect", "--wandb", "a/b/c"): "is not ENTITY/PROJECT",
        ("figures", str(tmp_path / "empty"), "-o", str(tmp_path / "o")): "no result.json found under",
        ("figures", str(tmp_path / "missing"), "-o", str(tmp_path / "o")): "is neither a results table",
        ("figures", str(tmp_path / "cols.parquet"), "-o", str(tmp_path / "o")): "missing columns: family, status",
        ("figures", str(tmp_path / "junk.parquet"), "-o", str(tmp_path / "o")): "cannot read results table",
        ("figures", "paper", "-o", str(tmp_path / "o"), "--compute", "flops"): "TPUv3 core-days only",
        ("figures", "paper", "-o", str(tmp_path / "o"), "--metric", "nope"): "unknown metric 'nope'",
    }
    for argv, message in cases.items():
        assert run_cmd(list(argv)) == EXIT_USAGE, argv
        out = capsys.readouterr().out.strip()
        assert out.startswith("error: ") and message in out and "\n" not in out, (argv, out)
    assert not (tmp_path / "o").exists() and not (tmp_path / "results.parquet").exists()


def test_a_failure_while_drawing_leaves_no_partial_figures(synthetic_table, tmp_path, monkeypatch):
    df, _ = synthetic_table
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "keep.txt").write_text("earlier output")

    def broken(*args, **kwargs):
        raise UserError("drawing failed")

    monkeypatch.setattr(figures, "draw_data_scaling", broken)  # after two figures were written
    with pytest.raises(UserError, match="drawing failed"):
        figures.render(df, tmp_path / "figs", n_boot=0)
    assert [p.name for p in all_files(tmp_path)] == ["keep.txt"]


# ----------------------------------------------------------------------------------------------
# The notebook


def test_notebook_runs_against_a_small_results_table(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    R.write_records(R.synthetic_records(56, seed=3, statuses={"failed": 0.1}), tmp_path / "runs")
    df, _ = R.collect(tmp_path / "runs")
    R.write_table(df, tmp_path / "results.parquet")
    monkeypatch.setenv("MIXER_SCALING_RESULTS", str(tmp_path / "results.parquet"))
    monkeypatch.setenv("MIXER_SCALING_FIGURES", str(tmp_path / "figs"))
    nb = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "56 runs:" in text and "compute frontier" in text
    assert (tmp_path / "figs" / "data_scaling.png").exists()


def test_a_demo_sized_table_draws_without_fits(tmp_path):
    """Three tiny models, one data size each (what `mixer-scaling demo` leaves): points, no curves."""
    for i, (model, family) in enumerate([("mixer/tiny", "mixer"), ("vit/tiny", "vit"), ("bit/tiny", "bit")]):
        write(tmp_path / "runs" / f"r{i}", record(f"r{i}", model=model, family=family,
                                                    flops_per_image=5e7 * (i + 1), throughput=1000 / (i + 1)))
    df, summary = R.collect(tmp_path / "runs")
    out = figures.render(df, tmp_path / "figs", summary=summary, n_boot=20)
    assert (tmp_path / "figs" / "data_scaling.png").exists()
    assert "mixer/tiny one size only" in next(line for line in out.summary if line.startswith("data scaling ("))
    assert out.fits.empty  # three points are too few for three parameters
