"""``mixer-scaling figures ... --wandb``: the results table, every figure and dashboard.html go to ONE W&B run.

The real W&B client logs offline (the servers are never reached from tests) and the test reads the run's
own transaction log back (``run-<id>.wandb``, what ``wandb sync`` uploads), as tests/test_wandb_roundtrip.py
does, plus the table file W&B wrote beside it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from mixer_scaling.analysis.results import row_from_record, synthetic_records, to_frame, write_table
from mixer_scaling.analysis.wandb_results import JOB_TYPE, study_of, table_rows
from test_wandb_roundtrip import transaction_log

pytestmark = pytest.mark.slow  # each case renders figures and starts W&B's service: a few seconds

ROWS = 8


@pytest.fixture
def table(tmp_path) -> tuple[Path, pd.DataFrame]:
    """A small deterministic results table (study ``synthetic``) written as parquet."""
    df = to_frame([row_from_record(r) for r in synthetic_records(ROWS, seed=0)])
    path = tmp_path / "results.parquet"
    write_table(df, path)
    return path, df


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}  # never a real key: offline only
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", **changes})
    return env


def _figures(tmp_path: Path, *args: str, env: dict | None = None):
    import subprocess

    return subprocess.run([sys.executable, "-m", "mixer_scaling.cli", "figures", *args], cwd=tmp_path,
                          env=env or _env(), capture_output=True, text=True, timeout=300)


def _offline_run(figs: Path) -> tuple[Path, dict, dict, list]:
    """The one offline run under ``figs/wandb``: its folder, run record fields, last history row, log."""
    runs = sorted((figs / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1, logs
    log = transaction_log(logs[0])
    run = [r.run for r in log if r.WhichOneof("record_type") == "run"]
    history = [r.history for r in log if r.WhichOneof("record_type") == "history"]
    assert len(run) == 1 and len(history) == 1, (len(run), len(history))
    row = {"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json) for i in history[0].item}
    fields = {"group": run[0].run_group, "job_type": run[0].job_type, "project": run[0].project}
    exits = [r.exit.exit_code for r in log if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]
    return runs[0], fields, row, log


def test_figures_wandb_logs_the_table_every_figure_and_the_dashboard_to_one_run(tmp_path, table):
    path, df = table
    figs = tmp_path / "figs"
    proc = _figures(tmp_path, str(path), "-o", str(figs), "--boot", "10", "--wandb", "me/proj")
    assert proc.returncode == 0, proc.stderr
    run_dir, fields, row, _ = _offline_run(figs)
    assert fields == {"group": "synthetic", "job_type": JOB_TYPE, "project": "proj"}
    assert JOB_TYPE == "analysis"

    # the table: its row and column counts, and the columns themselves in the file W&B wrote
    assert row["results/_type"] == "table-file"
    assert (row["results/nrows"], row["results/ncols"]) == (ROWS, len(df.columns))
    logged = json.loads((run_dir / "files" / row["results/path"]).read_text())
    assert logged["columns"] == [str(c) for c in df.columns] and len(logged["data"]) == ROWS
    assert sorted(r[logged["columns"].index("run_id")] for r in logged["data"]) == sorted(df["run_id"])

    # one image per figure PNG, keyed by its name; the dashboard as HTML
    pngs = sorted(p.stem for p in figs.glob("*.png"))
    assert pngs
    images = sorted(k[len("figures/"):-len("/_type")] for k, v in row.items() if v == "image-file")
    assert images == pngs
    assert row["dashboard/_type"] == "html-file" and (figs / "dashboard.html").is_file()
    assert "W&B: results table and" in proc.stdout and f"wandb sync {figs / 'wandb' / run_dir.name}" in proc.stdout


def test_wandb_alone_uses_the_studys_wandb_settings(tmp_path, table):
    path, _ = table
    proc = _figures(tmp_path, str(path), "-o", "figs", "--boot", "10", "--wandb")
    assert proc.returncode == 0, proc.stderr
    _, fields, _, _ = _offline_run(tmp_path / "figs")
    assert fields["project"] == "mixer-scaling"  # conf/wandb/default.yaml
    assert "mixer-scaling" in (ROOT / "src" / "mixer_scaling" / "conf" / "wandb" / "default.yaml").read_text()


def test_online_unreachable_logs_offline_with_one_warning(tmp_path, table):
    path, _ = table
    env = _env(WANDB_MODE="online", HOME=str(tmp_path / "home"), WANDB_BASE_URL="http://127.0.0.1:9")
    proc = _figures(tmp_path, str(path), "-o", "figs", "--boot", "10", "--wandb", "me/proj", env=env)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "W&B" in ln]
    assert len(warnings) == 1 and "logging the results offline" in warnings[0], proc.stderr
    _offline_run(tmp_path / "figs")


def test_when_wandb_cannot_start_the_figures_are_still_written(tmp_path, table):
    path, _ = table
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "wandb").write_text("a file where W&B's folder would go")
    proc = _figures(tmp_path, str(path), "-o", str(figs), "--boot", "10", "--wandb", "me/proj")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "W&B" in ln]
    assert len(warnings) == 1 and "the figures are written, the results were not logged" in warnings[0], proc.stderr
    assert list(figs.glob("*.png")) and (figs / "dashboard.html").is_file()
    assert "W&B: results not logged" in proc.stdout


@pytest.mark.parametrize("args, env, parts", [
    (["{table}", "--wandb", "me/proj/x"], {}, ["figures --wandb 'me/proj/x'", "not ENTITY/PROJECT", "allowed"]),
    (["{table}", "--wandb", "me/"], {}, ["figures --wandb 'me/'", "not ENTITY/PROJECT"]),
    (["paper", "--wandb", "me/proj"], {}, ["figures paper --wandb", "give a results table"]),
    (["{table}", "--wandb", "me/proj"], {"WANDB_MODE": "sometimes"}, ["WANDB_MODE='sometimes'", "choose one of"]),
], ids=["two-slashes", "no-project", "paper", "bad-mode"])
def test_bad_wandb_input_is_one_line_exit_2_and_nothing_created(tmp_path, table, args, env, parts):
    path, _ = table
    args = [a.replace("{table}", str(path)) for a in args]
    before = sorted(tmp_path.rglob("*"))
    proc = _figures(tmp_path, *args, "-o", str(tmp_path / "figs"), "--boot", "10", env=_env(**env))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert sorted(tmp_path.rglob("*")) == before  # no figures folder, no W&B files


def test_the_group_is_the_tables_one_study_and_missing_cells_are_empty():
    df = to_frame([row_from_record(r) for r in synthetic_records(3, seed=0)])
    assert study_of(df) == "synthetic"
    two = df.copy()
    two.loc[0, "study"] = "other"
    assert study_of(two) is None and study_of(df.assign(study=pd.NA)) is None
    columns, rows = table_rows(df)
    assert columns == list(df.columns) and len(rows) == 3
    i = columns.index("best_step")  # <NA> in the table (synthetic records have none) → None, JSON-safe
    assert all(r[i] is None for r in rows)
    json.dumps(rows)
