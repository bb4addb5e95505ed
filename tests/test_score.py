"""Scoring finished runs on new evaluation settings without retraining (issue 16, item 6): ``mixer-scaling
evaluate`` and a ``train`` of a done run whose config asks for more evaluation. Real runs, real processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, run_cli
from mixer_scaling import locks
from mixer_scaling.records import read_record

MICRO = ["model=mixer/micro", "data.image_size=16", *TINY, "fewshot.datasets=[digits]", "fewshot.shots=[1]"]


def train(runs: Path, *extra: str, cwd: Path) -> dict:
    proc = run_cli(["-m", "mixer_scaling.train", *MICRO, f"runs_dir={runs}", *extra], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = [d for d in runs.iterdir() if (d / "result.json").exists()]
    return read_record(run_dir) | {"_dir": run_dir, "_output": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished micro run scored on digits 1-shot only, and (trained separately) the same run scored
    from the start on digits and the held-out synthetic classes at 1 and 5 shots."""
    tmp = tmp_path_factory.mktemp("score")
    only_digits = train(tmp / "a", cwd=tmp)
    from_start = train(tmp / "b", "fewshot.datasets=[digits,synthetic_heldout]", "fewshot.shots=[1,5]", cwd=tmp)
    return tmp, only_digits, from_start


def copy_run(finished, dest: Path) -> Path:
    """A copy of the digits-only run in ``dest`` (a test's own folder)."""
    _, only_digits, _ = finished
    runs = dest / "runs"
    shutil.copytree(only_digits["_dir"].parent, runs)
    return runs / only_digits["_dir"].name


def snapshot(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name not in ("result.json", ".lock")}


def test_evaluation_settings_share_one_run_and_scoring_later_equals_scoring_at_the_end(finished, tmp_path):
    tmp, only_digits, from_start = finished
    assert only_digits["run_id"] == from_start["run_id"]  # the few-shot sets are not identity
    run_dir = copy_run(finished, tmp_path)
    files = snapshot(run_dir)
    proc = run_cli(["-m", "mixer_scaling.cli", "evaluate", str(run_dir.parent),
                    "fewshot.datasets=[digits,synthetic_heldout]", "fewshot.shots=[1,5]"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"[1/1] {run_dir.name}: digits 1-shot" in proc.stdout and "synthetic_heldout 5-shot" in proc.stdout
    rec = read_record(run_dir)
    # The same weights (early stopping's choice), the same protocol: the numbers a run scored at its end has.
    assert rec["metrics"]["fewshot"] == from_start["metrics"]["fewshot"]
    assert rec["evaluation"]["fewshot"] == from_start["evaluation"]["fewshot"]
    assert rec["attempts"] == only_digits["attempts"] and rec["steps"] == only_digits["steps"]  # not retrained
    assert snapshot(run_dir) == files  # weights, metrics.jsonl, config.yaml untouched
    assert rec["evaluated_at"][-1]["what"] == "digits 1,5-shot; synthetic_heldout 1,5-shot"
    again = run_cli(["-m", "mixer_scaling.cli", "evaluate", str(run_dir), "fewshot.shots=[1,5]",
                     "fewshot.datasets=[digits,synthetic_heldout]"], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == f"[1/1] {run_dir.name}: up to date"


def test_train_of_a_done_run_with_more_evaluation_scores_it_without_retraining(finished, tmp_path):
    tmp, only_digits, from_start = finished
    run_dir = copy_run(finished, tmp_path)
    files = snapshot(run_dir)
    rec = train(run_dir.parent, "fewshot.shots=[1,5]", cwd=tmp_path)
    assert "not retraining, scoring it on digits 1,5-shot" in rec["_output"]
    assert rec["metrics"]["fewshot"]["digits"] == from_start["metrics"]["fewshot"]["digits"]
    assert rec["attempts"] == only_digits["attempts"] and snapshot(run_dir) == files


def test_other_settings_replace_a_sets_numbers_and_throughput_is_measured_again(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    proc = run_cli(["-m", "mixer_scaling.cli", "evaluate", str(run_dir), "fewshot.seeds=[0]",
                    "eval.throughput_batch_sizes=[4]"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = read_record(run_dir)
    assert rec["evaluation"]["fewshot"]["digits"]["seeds"] == [0]
    assert rec["evaluation"]["throughput"] == {"batch_sizes": [4], "repeats": 1}
    assert rec["throughput_detail"]["batch_size"] == 4 and list(rec["throughput_detail"]["per_batch"]) == ["4"]
    assert rec["throughput"] == rec["throughput_detail"]["img_per_s"] > 0


def test_a_run_another_process_writes_is_not_scored(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    before = (run_dir / "result.json").read_bytes()
    lock = locks.hold_run(run_dir, run_dir.name)
    try:
        proc = run_cli(["-m", "mixer_scaling.cli", "evaluate", str(run_dir), "fewshot.shots=[1,5]"], cwd=tmp_path)
    finally:
        lock.release()
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"[1/1] {run_dir.name}: not scored: ") and "pid" in proc.stdout
    assert (run_dir / "result.json").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["train.lr=1"], "'train.lr=1' cannot be given to evaluate: only evaluation settings"),
    (["fewshot.shots=[0]"], "fewshot.shots=[0] is not allowed; expected a non-empty list of integers >= 1"),
    (["fewshot.l2_reg=-1"], "fewshot.l2_reg=-1 is not allowed"),
    (["fewshot.nope=1"], "fewshot.nope is not a config key; keys under fewshot: datasets"),
])
def test_bad_evaluation_settings_are_one_line_and_change_nothing(finished, tmp_path, args, message):
    run_dir = copy_run(finished, tmp_path)
    before = (run_dir / "result.json").read_bytes()
    proc = run_cli(["-m", "mixer_scaling.cli", "evaluate", str(run_dir), *args], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and not proc.stdout
    assert (run_dir / "result.json").read_bytes() == before


def test_a_sweep_asking_for_more_evaluation_scores_its_done_cells_without_retraining(tmp_path):
    """``sweep status`` shows a done cell the sweep now asks more of as ``to score``; relaunching scores it."""
    cell = ["model=mixer/micro", f"runs_dir={tmp_path / 'runs'}"]
    first = run_cli(["-m", "mixer_scaling.cli", "sweep", "launch", "smoke", *cell, "--executor", "local"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").glob("??????????")
    trained, files = read_record(run_dir), snapshot(run_dir)

    def state(*more):
        proc = run_cli(["-m", "mixer_scaling.cli", "sweep", "status", "smoke", *cell, *more, "--json"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        (row,) = json.loads(proc.stdout)
        return row["state"], row["detail"]

    assert state() == ("done", "")
    assert state("fewshot.shots=[1,5,10]") == ("to score", "digits 1,5,10-shot")
    again = run_cli(["-m", "mixer_scaling.cli", "sweep", "launch", "smoke", *cell, "fewshot.shots=[1,5,10]",
                     "--executor", "local"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    rec = read_record(run_dir)
    assert set(rec["metrics"]["fewshot"]["digits"]) == {"1", "5", "10"}
    assert {k: rec["metrics"]["fewshot"]["digits"][k] for k in ("1", "5")} == trained["metrics"]["fewshot"]["digits"]
    assert rec["attempts"] == trained["attempts"] and snapshot(run_dir) == files
    assert state("fewshot.shots=[1,5,10]") == ("done", "")


def test_a_damaged_record_is_skipped_in_one_line_and_the_others_are_scored(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    broken = run_dir.parent / "0000000000"
    broken.mkdir()
    (broken / "result.json").write_text('{"status": "done", "con')
    proc = run_cli(["-m", "mixer_scaling.cli", "evaluate", str(run_dir.parent), "fewshot.shots=[1,5]"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("[1/2] 0000000000: skipped: its record is damaged (")
    assert lines[1].startswith(f"[2/2] {run_dir.name}: digits 1-shot ") and "Traceback" not in proc.stderr
    assert set(read_record(run_dir)["metrics"]["fewshot"]["digits"]) == {"1", "5"}
    assert (broken / "result.json").read_text() == '{"status": "done", "con'
