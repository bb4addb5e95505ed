"""The `mixer-scaling` command line, run as a user runs it."""

import json

import pytest

from conftest import run_cli

EXACT = {"mixer/b16": 59_880_472, "mixer/b32": 60_293_428, "mixer/l16": 208_196_168}


def test_models_json_gives_the_official_counts(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for name, params in EXACT.items():
        assert rows[name]["params"] == params
    assert rows["mixer/h14"]["params_backbone"] == 431_069_952
    for r in rows.values():
        assert set(r) >= {"name", "family", "params", "params_backbone", "gflops", "image_size", "patch"}
        assert r["gflops"] > 0 and r["params"] > r["params_backbone"]
    assert {"mixer/tiny", "vit/tiny", "bit/tiny", "vit/h14", "bit/r200x3", "bit/r152x4"} <= set(rows)
    # the paper's Table 1 ordering of cost: B/16 costs ~4x B/32 (4x the tokens)
    assert 3.5 < rows["mixer/b16"]["gflops"] / rows["mixer/b32"]["gflops"] < 4.5


def test_models_num_classes_changes_the_head(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models", "--json", "--num-classes", "10"], cwd=tmp_path)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["mixer/b16"]["params"] == rows["mixer/b16"]["params_backbone"] + 768 * 10 + 10


def test_models_table(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "mixer/h14" in proc.stdout and "GFLOPs" in proc.stdout


@pytest.mark.slow
def test_demo_runs_its_sweep_here_then_draws_the_figures(tmp_path):
    """`mixer-scaling demo` on a two-cell slice of the demo grid: local executor, records, table, figures,
    the fine-tuning stage, and the dashboard written beside the figures with its path printed."""
    import os

    import pandas as pd

    args = ["-m", "mixer_scaling.cli", "demo", "model=mixer/micro", "data.fraction=0.3,1.0", "seed=0",
            "train.examples_seen=256", "data.val_size=128", "fewshot.shots=[1,5]", "wandb.mode=disabled",
            f"runs_dir={tmp_path / 'runs'}"]
    proc = run_cli(args, cwd=tmp_path, env={"COLUMNS": "160"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 to run" in proc.stdout and "2/2 runs done" in proc.stdout
    assert "4/4 fine-tunes" in proc.stdout  # the demo's second stage: the 100% seed-0 parent at four fine-tuning lrs
    figures = tmp_path / "figures" / "demo"
    page = figures / "dashboard.html"
    assert f"dashboard: {page}" in proc.stdout.splitlines()
    assert page.stat().st_size > 1_000_000  # plotly.js is inside it
    umask = os.umask(0)
    os.umask(umask)
    assert page.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable like the figures, not a private temp file
    assert not [p for p in figures.iterdir() if p.name.startswith(".")]  # no temp file left
    for stem in ("pareto_compute", "pareto_throughput", "data_scaling", "pareto_finetuned"):
        assert (figures / f"{stem}.png").stat().st_size > 0 and (figures / f"{stem}.csv").exists()
    assert "on the frontier" in proc.stdout and "data scaling" in proc.stdout
    assert (figures / "findings.md").exists() and (figures / "findings.json").exists()
    facts = json.loads((figures / "study.json").read_text())
    assert facts["command"].startswith("mixer-scaling study demo model=mixer/micro data.fraction=0.3,1.0 seed=0")
    assert facts["sweep"] == "demo" and facts["done"] == 2 and facts["this_invocation"]["runs_trained"] == 2
    assert facts["versions"]["torch"] and facts["train_seconds_sum"] > 0 and facts["machine"]["cores"] >= 1
    table = pd.read_parquet(figures / "results.parquet")
    assert (figures / "results.csv").exists()
    assert sorted(table.fraction) == [0.3, 1.0] and set(table.status) == {"done"}

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "0 to run" in again.stdout  # finished runs are reused
