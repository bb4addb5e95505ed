"""One run end to end on the embedded data: record, metrics, checkpoint, resume, skip, W&B."""

import json
import os
import signal

import pytest
import torch

from mixer_scaling import records
from mixer_scaling.config import compose
from mixer_scaling.engine import Interrupted
from mixer_scaling.precision import cpu_has_bf16, resolve
from mixer_scaling.records import MetricsLog, read_record, run_id_of
from mixer_scaling.train import run

REQUIRED = ["run_id", "status", "config", "family", "size", "params", "flops_per_image", "fraction", "train_size",
            "examples_seen", "epochs", "train_seconds", "device_hours", "throughput", "metrics"]


def _losses(run_dir):
    return [(r["step"], r["train/loss"]) for r in MetricsLog(run_dir).read() if "train/loss" in r]


def _weights(run_dir):
    return torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["model"]


@pytest.mark.parametrize("model", ["mixer/tiny", "vit/tiny", "bit/tiny"])
def test_a_tiny_run_writes_a_complete_record(tiny, model):
    rec = run(compose([*tiny, f"model={model}", "data.fraction=0.5"]))
    run_dir = records.Path(rec["run_dir"])
    on_disk = read_record(run_dir)
    assert on_disk["status"] == "done" and on_disk == json.loads(json.dumps(rec, default=str))
    for key in REQUIRED:
        assert key in on_disk, key
    assert on_disk["family"] == model.split("/")[0] and on_disk["model"] == model
    assert on_disk["train_size"] == 1000 and on_disk["examples_seen"] == 1024
    assert on_disk["epochs"] == pytest.approx(1.024)
    m = on_disk["metrics"]
    assert 0.0 <= m["val_top1"] <= 1.0
    assert set(m["fewshot"]) == {"digits", "synthetic_heldout"}
    assert set(m["fewshot"]["digits"]) == {"1", "5"}
    assert m["fewshot"]["digits"]["5"] > 0.12  # 10 classes: chance is 0.1; even barely trained features beat it
    assert on_disk["throughput"] > 0 and on_disk["device_hours"] > 0
    assert (run_dir / "config.yaml").exists() and (run_dir / records.CHECKPOINT_FILE).exists()
    assert [r["step"] for r in MetricsLog(run_dir).read() if "train/loss" in r] == list(range(2, 17, 2))
    assert on_disk["precision"] == resolve("auto", torch.device("cpu")) and on_disk["best_step"] == 16
    assert run_dir.name == run_id_of(compose([*tiny, f"model={model}", "data.fraction=0.5"]))


def test_training_learns(tiny):
    rec = run(compose([*tiny, "train.examples_seen=4096"]))
    losses = [l for _, l in _losses(records.Path(rec["run_dir"]))]
    assert losses[-1] < losses[0] - 0.3


def test_a_done_run_is_not_retrained(tiny):
    first = run(compose(tiny))
    mtime = os.path.getmtime(records.Path(first["run_dir"]) / records.CHECKPOINT_FILE)
    again = run(compose(tiny))
    assert again["updated_at"] == first["updated_at"]
    assert os.path.getmtime(records.Path(first["run_dir"]) / records.CHECKPOINT_FILE) == mtime


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_a_stop_signal_is_bit_exact(tmp_path, tiny, monkeypatch, precision):
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (train.precision=bf16 is refused here)")
    tiny = [*tiny, f"train.precision={precision}"]
    clean = run(compose([*tiny, f"runs_dir={tmp_path / 'clean'}"]))
    assert clean["precision"] == precision

    cfg = compose([*tiny, f"runs_dir={tmp_path / 'cut'}"])
    append = MetricsLog.append

    def stop_at_step_6(self, row):  # SLURM's preemption signal, delivered mid-run
        append(self, row)
        if row["step"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricsLog, "append", stop_at_step_6)
    with pytest.raises(Interrupted):
        run(cfg)
    run_dir = tmp_path / "cut" / run_id_of(cfg)
    assert read_record(run_dir)["status"] == "interrupted"
    assert torch.load(run_dir / records.CHECKPOINT_FILE, weights_only=False)["step"] == 6
    monkeypatch.setattr(MetricsLog, "append", append)

    resumed = run(cfg)
    assert resumed["attempts"] == 2
    assert _losses(run_dir) == _losses(records.Path(clean["run_dir"]))
    assert resumed["metrics"] == clean["metrics"]
    a, b = _weights(run_dir), _weights(records.Path(clean["run_dir"]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_a_crash_between_checkpoints(tmp_path, tiny, monkeypatch):
    clean = run(compose([*tiny, f"runs_dir={tmp_path / 'clean'}"]))
    cfg = compose([*tiny, f"runs_dir={tmp_path / 'cut'}"])
    append = MetricsLog.append

    def crash_at_step_10(self, row):  # logged step 10, last checkpoint at 8: the crash loses steps 9-10
        append(self, row)
        if row["step"] == 10:
            raise RuntimeError("node failure")

    monkeypatch.setattr(MetricsLog, "append", crash_at_step_10)
    with pytest.raises(RuntimeError, match="node failure"):
        run(cfg)
    run_dir = tmp_path / "cut" / run_id_of(cfg)
    failed = read_record(run_dir)
    assert failed["status"] == "failed" and failed["error"]["message"] == "node failure"
    assert "RuntimeError" in failed["error"]["traceback"]
    monkeypatch.setattr(MetricsLog, "append", append)

    resumed = run(cfg)
    assert resumed["status"] == "done" and "error" not in resumed
    assert _losses(run_dir) == _losses(records.Path(clean["run_dir"]))
    a, b = _weights(run_dir), _weights(records.Path(clean["run_dir"]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_wandb_offline_run_logs_with_the_real_client(tiny, tmp_path):
    rec = run(compose([*tiny, "wandb.mode=offline", "study=wandb-test"]))
    run_dir = records.Path(rec["run_dir"])
    assert rec["wandb"]["mode"] == "offline" and rec["wandb"]["id"] == rec["run_id"]
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{rec['run_id']}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


