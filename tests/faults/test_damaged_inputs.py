"""Damaged records, duplicated or impossible results, unwritable outputs and Ctrl-C, through the real commands.

* A ``result.json`` whose ``metrics`` or ``config`` (or ``error``, ``metrics.fewshot``) has the wrong type is
  skipped by ``collect`` with one line and counted with the other unreadable records; ``sweep status``
  shows its cell as ``damaged`` (counted in the title) instead of crashing.
* A run collected twice (a runs directory beside its backup copy) is one row, with one warning line; an
  accuracy outside [0, 1] is dropped with one warning line, its run kept. ``figures`` never counts the
  duplicate as a seed.
* ``figures`` on a table whose default few-shot column is empty draws another metric that has values and
  says which.
* A read-only place (a real read-only tmpfs mounted by the test; a chmod-ed folder when not root) for
  ``collect -o``, ``figures -o`` or a launch's ``runs_dir``: one line, exit 2, nothing created, before any
  work (the cases on names over 255 bytes and files on the way are in the bad-input matrix).
* ``collect -o results.csv`` writes CSV, ``.parquet`` writes parquet.
* Ctrl-C (SIGINT to the process group, as a terminal sends it) in ``mixer-scaling demo``: one line, exit
  130, no traceback; the runs that finished are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from mixer_scaling import cli
from mixer_scaling.analysis.results import synthetic_records, write_records

CLI = ["-m", "mixer_scaling.cli"]


def records_dir(tmp: Path, n: int = 6, name: str = "runs") -> tuple[Path, list[dict]]:
    recs = synthetic_records(n, seed=1)
    return write_records(recs, tmp / name), recs


def edit_record(run_dir: Path, **fields) -> None:
    path = run_dir / "result.json"
    rec = json.loads(path.read_text())
    rec.update(fields)
    path.write_text(json.dumps(rec))


def in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Records of the wrong shape (item 7)
# ---------------------------------------------------------------------------------------------

WRONG_TYPES = {  # field → a value of the wrong type, and the words of its skip line
    "metrics": ([0.5, 0.7], "field metrics is a JSON array, not an object"),
    "config": ("train.lr=1e-3", "field config is a JSON string, not an object"),
    "error": ("boom", "field error is a JSON string, not an object"),
}


def test_collect_skips_and_counts_records_with_fields_of_the_wrong_type(tmp_path):
    runs, recs = records_dir(tmp_path, n=6)
    ids = [r["run_id"] for r in recs]
    for run_id, (field, (value, _)) in zip(ids, WRONG_TYPES.items()):
        edit_record(runs / run_id, **{field: value})
    edit_record(runs / ids[3], metrics={"val_top1": 0.5, "fewshot": {"digits": [0.1, 0.2]}})
    (runs / ids[4] / "result.json").write_text('{"status": "done", "model": "mixer/b3')  # truncated: counted as before

    proc = run_cli([*CLI, "collect", str(runs), "-o", str(tmp_path / "t.parquet")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 5, proc.stderr
    for run_id, (_, (_, words)) in zip(ids, WRONG_TYPES.items()):
        assert any(run_id in line and words in line for line in skipped), (words, skipped)
    assert any(ids[3] in line and "metrics.fewshot.digits is a JSON array" in line for line in skipped)
    assert "6 runs: 1 done" in proc.stdout and "5 unreadable records skipped" in proc.stdout, proc.stdout
    assert list(pd.read_parquet(tmp_path / "t.parquet").run_id) == [ids[5]]


def test_sweep_status_shows_a_record_with_fields_of_the_wrong_type_as_damaged(tmp_path, capsys):
    from mixer_scaling.sweep import load

    runs = tmp_path / "runs"
    cells = load("smoke", [f"runs_dir={runs}"], progress=False).cells
    assert len(cells) == 2
    for cell, (field, value) in zip(cells, (("metrics", [1, 2]), ("config", "lr=1"))):
        cell.run_dir.mkdir(parents=True)
        (cell.run_dir / "result.json").write_text(json.dumps({
            "run_id": cell.run_id, "status": "done", "model": "mixer/micro", "family": "mixer", field: value}))

    code, out, err = in_process(["sweep", "status", "smoke", f"runs_dir={runs}", "--json"], capsys)
    assert code == 0, err
    rows = {r["run_id"]: r for r in json.loads(out)}
    assert rows[cells[0].run_id]["state"] == "damaged" and "metrics is a JSON array" in rows[cells[0].run_id]["detail"]
    assert rows[cells[1].run_id]["state"] == "damaged" and "config is a JSON string" in rows[cells[1].run_id]["detail"]

    proc = run_cli([*CLI, "sweep", "status", "smoke", f"runs_dir={runs}"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "sweep smoke: 2 damaged" in proc.stdout, proc.stdout


def test_a_done_record_with_fields_of_the_wrong_type_is_set_aside_and_the_run_trained_again(tmp_path):
    """The run itself reads its record as collect and sweep status do: a done record with ``metrics`` of the
    wrong type is damaged, not done, so the rerun moves it to result.json.corrupt and trains."""
    from conftest import TINY

    args = ["-m", "mixer_scaling.train", "model=mixer/micro", "train.examples_seen=256", *TINY[1:],
            f"runs_dir={tmp_path / 'runs'}"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    edit_record(run_dir, metrics=[1, 2])

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not retraining" not in again.stdout + again.stderr
    assert json.loads((run_dir / "result.json.corrupt").read_text())["metrics"] == [1, 2]
    rec = json.loads((run_dir / "result.json").read_text())
    assert rec["status"] == "done" and isinstance(rec["metrics"], dict) and rec["metrics"]["val_top1"] >= 0


# ---------------------------------------------------------------------------------------------
# Duplicates and impossible accuracies (item 10)
# ---------------------------------------------------------------------------------------------


def test_a_runs_directory_collected_with_its_backup_counts_each_run_once(tmp_path):
    runs, recs = records_dir(tmp_path, n=28)  # 7 models x 4 fractions, one seed
    shutil.copytree(runs, tmp_path / "backup")
    proc = run_cli([*CLI, "collect", str(runs), str(tmp_path / "backup"), "-o", str(tmp_path / "t.parquet")],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "dropped 28 duplicate rows of 28 run ids" in warnings[0], proc.stderr
    assert "28 runs: 28 done" in proc.stdout, proc.stdout
    table = pd.read_parquet(tmp_path / "t.parquet")
    assert len(table) == 28 and table.run_id.is_unique

    # A table that holds every run twice (concatenated by hand): figures counts one seed per run.
    pd.concat([table, table]).to_parquet(tmp_path / "twice.parquet")
    proc = run_cli([*CLI, "figures", str(tmp_path / "twice.parquet"), "-o", str(tmp_path / "figs"), "--boot", "0"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: dropped 28 duplicate rows of 28 run ids" in proc.stderr
    scaling = pd.read_csv(tmp_path / "figs" / "data_scaling.csv")
    assert set(scaling.n_seeds) == {1}, scaling


def test_the_most_finished_copy_of_a_run_is_kept(tmp_path):
    runs, recs = records_dir(tmp_path, n=3)
    shutil.copytree(runs, tmp_path / "backup")
    edit_record(tmp_path / "backup" / recs[0]["run_id"], status="running", metrics={})  # an older copy
    proc = run_cli([*CLI, "collect", str(tmp_path / "backup"), str(runs), "-o", str(tmp_path / "t.csv")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == 3 and set(table.status) == {"done"}
    assert "3 runs: 3 done" in proc.stdout


def test_accuracies_outside_zero_one_are_dropped_with_a_warning(tmp_path):
    runs, recs = records_dir(tmp_path, n=4)
    a, b = recs[0]["run_id"], recs[1]["run_id"]
    edit_record(runs / a, metrics={**recs[0]["metrics"], "val_top1": 85.0})  # a percentage
    few = json.loads(json.dumps(recs[1]["metrics"]))
    few["fewshot"]["digits"]["5"] = -0.2
    edit_record(runs / b, metrics=few)
    proc = run_cli([*CLI, "collect", str(runs), "-o", str(tmp_path / "t.parquet")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: dropped 2 accuracies outside [0, 1] (val_top1: 1, fewshot_digits_5: 1): accuracies "
                        "are fractions, so these are not (a percentage?); their runs are kept"], proc.stderr
    table = pd.read_parquet(tmp_path / "t.parquet").set_index("run_id")
    assert len(table) == 4
    assert pd.isna(table.loc[a, "val_top1"]) and table.loc[a, "fewshot_digits_5"] == pytest.approx(
        recs[0]["metrics"]["fewshot"]["digits"]["5"])
    assert pd.isna(table.loc[b, "fewshot_digits_5"]) and table.loc[b, "val_top1"] == pytest.approx(
        recs[1]["metrics"]["val_top1"])
    values = table[["val_top1", "select_top1", "fewshot_digits_5"]].to_numpy().ravel()
    assert ((values[~pd.isna(values)] >= 0) & (values[~pd.isna(values)] <= 1)).all()


# ---------------------------------------------------------------------------------------------
# Output formats and the default metric (item 9)
# ---------------------------------------------------------------------------------------------


def test_collect_writes_the_format_the_name_says(tmp_path):
    runs, recs = records_dir(tmp_path, n=4)
    for name in ("t.csv", "t.parquet", "T.CSV"):
        proc = run_cli([*CLI, "collect", str(runs), "-o", str(tmp_path / name)], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "t.csv").read_bytes().startswith(b"PAR1")
    assert pd.read_csv(tmp_path / "t.csv").run_id.tolist() == pd.read_parquet(tmp_path / "t.parquet").run_id.tolist()
    assert pd.read_csv(tmp_path / "T.CSV").shape == pd.read_csv(tmp_path / "t.csv").shape
    proc = run_cli([*CLI, "figures", str(tmp_path / "t.csv"), "-o", str(tmp_path / "figs"), "--boot", "0"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # figures reads the CSV it was given


def table_with_empty_fewshot(tmp: Path, keep: str | None = None) -> Path:
    runs, _ = records_dir(tmp, n=28)
    table = run_cli([*CLI, "collect", str(runs), "-o", str(tmp / "t.parquet")], cwd=tmp)
    assert table.returncode == 0, table.stderr
    df = pd.read_parquet(tmp / "t.parquet")
    for col in [c for c in df.columns if c.startswith("fewshot_") and not (keep and c.startswith(keep))]:
        df[col] = float("nan")  # the few-shot evaluation did not run
    df.to_parquet(tmp / "t.parquet")
    return tmp / "t.parquet"


@pytest.mark.parametrize("keep, drawn", [(None, "val_top1"), ("fewshot_synthetic_heldout", "fewshot_synthetic_heldout_5")])
def test_figures_falls_back_from_an_empty_fewshot_column_and_says_so(tmp_path, keep, drawn):
    table = table_with_empty_fewshot(tmp_path, keep)
    proc = run_cli([*CLI, "figures", str(table), "-o", str(tmp_path / "figs"), "--boot", "0"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"data scaling: fewshot_digits_5 has no values in the 28 finished runs; drawn with {drawn} instead "
            "(choose with --metric)") in proc.stdout, proc.stdout
    assert f"data scaling ({drawn} vs" in proc.stdout
    assert (tmp_path / "figs" / "data_scaling.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Read-only places (item 8): a real read-only file system
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write into: a read-only tmpfs (root, where mounts are allowed), else a
    folder without write permission (not root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "figs").mkdir()
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
        if ok.returncode != 0:
            pytest.skip("root without mounts: no way to make a folder read-only here")
        (folder / "figs").mkdir()
        (folder / "old.parquet").write_bytes(b"an earlier table")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        (folder / "old.parquet").write_bytes(b"an earlier table")
        for p in (folder / "figs", folder):
            p.chmod(0o555)
        yield folder
        for p in (folder, folder / "figs"):
            p.chmod(0o755)


@pytest.mark.parametrize("what", ["collect-new", "collect-replace", "figures-existing", "figures-new", "launch-local",
                                  "launch-slurm", "demo"])
def test_a_read_only_place_is_one_line_before_any_work(tmp_path, read_only, monkeypatch, capsys, what):
    runs, _ = records_dir(tmp_path, n=4)
    rw = tmp_path / "table.parquet"
    run_cli([*CLI, "collect", str(runs), "-o", str(rw)], cwd=tmp_path)
    argv, words = {
        "collect-new": (["collect", str(runs), "-o", f"{read_only}/new/t.parquet"], ["collect -o", "read-only"]),
        "collect-replace": (["collect", str(runs), "-o", f"{read_only}/old.parquet"], ["collect -o", "read-only"]),
        "figures-existing": (["figures", str(rw), "-o", f"{read_only}/figs"], ["figures -o", "read-only"]),
        "figures-new": (["figures", str(rw), "-o", f"{read_only}/new"], ["figures -o", "read-only"]),
        "launch-local": (["sweep", "launch", "smoke", f"runs_dir={read_only}/runs", "--executor", "local"],
                         ["runs_dir=", "read-only"]),
        "launch-slurm": (["sweep", "launch", "smoke", f"runs_dir={read_only}/runs", "--executor", "slurm"],
                         ["runs_dir=", "read-only"]),
        "demo": (["demo", "model=mixer/micro", "data.fraction=1.0", "seed=0", f"runs_dir={read_only}/runs"],
                 ["runs_dir=", "read-only"]),
    }[what]
    if os.geteuid() != 0:
        words = [w if w != "read-only" else "permission denied" for w in words]
    before = files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = in_process(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and out == "", (code, out, err)
    assert "sbatch" not in lines[0] and "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert files_under(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Ctrl-C (item 11)
# ---------------------------------------------------------------------------------------------


def test_ctrl_c_in_the_demo_is_one_line_exit_130_and_keeps_finished_runs(tmp_path):
    runs = tmp_path / "runs"
    args = [sys.executable, *CLI, "demo", "model=mixer/micro", "data.fraction=0.3,1.0,0.1", "seed=0",
            "train.examples_seen=256", "data.val_size=128", "fewshot.shots=[1,5]", "wandb.mode=disabled",
            f"runs_dir={runs}", "--parallel", "1", "--boot", "0"]
    # A terminal's Ctrl-C goes to its foreground process group: the command and every process it started.
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "160"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        done = []
        while not done:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no run finished in time"
            done = [p.parent for p in runs.glob("*/result.json") if json.loads(p.read_text()).get("status") == "done"]
            time.sleep(0.05)
        finished = {d: (d / "result.json").read_bytes() for d in done}
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        _reap(proc.pid)
    assert proc.returncode == 130, (proc.returncode, out[-2000:], err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == cli.INTERRUPTED_LINE, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-2000:]
    for run_dir, record in finished.items():  # the finished runs are kept as they were
        assert (run_dir / "result.json").read_bytes() == record


def _reap(pgid: int, timeout: float = 30) -> None:
    """Wait until every process of the group has exited (its cells stop on the same SIGINT); kill what is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass

