import json
import os


from mixer_scaling.config import compose
from mixer_scaling.records import MetricsLog, Record, atomic_write_json, read_record, run_id_of


def test_run_id_is_stable_and_ignores_paths_and_logging():
    base = compose(["runs_dir=/a", "wandb.mode=offline"])
    same = compose(["runs_dir=/elsewhere", "wandb.mode=disabled", "train.log_every=7", "progress=false",
                    "study=other", "train.checkpoint_every=3", "data.num_workers=2"])
    assert run_id_of(base) == run_id_of(same)
    assert len(run_id_of(base)) == 10


def test_run_id_changes_with_anything_that_changes_results():
    base = run_id_of(compose([]))
    for override in ["seed=1", "data.fraction=0.3", "model=vit/tiny", "train.lr=0.001",
                     "train.examples_seen=1000", "model.drop_path_rate=0.1"]:
        assert run_id_of(compose([override])) != base, override


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["result.json"]


def test_record_keeps_history_across_attempts(tmp_path):
    r = Record.open(tmp_path, {"run_id": "x"})
    r.save("running")
    r2 = Record.open(tmp_path, {"run_id": "x"})
    assert r2["attempts"] == 2 and r2["started_at"] == r["started_at"]
    r2.save("done")
    assert read_record(tmp_path)["status"] == "done"


def test_metrics_log_truncates_lines_after_a_checkpoint(tmp_path):
    m = MetricsLog(tmp_path)
    for step in (2, 4, 6):
        m.append({"step": step})
    with open(m.path, "a") as f:
        f.write('{"step": 8, "cut')  # a line cut by a kill
    m.truncate_after(4)
    assert [r["step"] for r in m.read()] == [2, 4]
