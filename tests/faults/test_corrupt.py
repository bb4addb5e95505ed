"""Damaged files on disk (made by the test): a truncated or bit-flipped checkpoint, a broken result.json.

Documented behaviour (README, "What a run survives"): a checkpoint that fails its SHA-256/length check is
never loaded. It is moved aside to ``<name>.corrupt`` and the run resumes from ``checkpoint.prev.pt``,
or from step 0 when nothing verifies. A damaged ``result.json`` is moved aside and the record restarts;
the step and compute counters come from the checkpoint. Either way the record's ``events`` say so, one
line each, and the run ends exactly as an undamaged one.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from fault_helpers import QUICK, losses, reference, same_weights, weights
from mixer_scaling import checkpoint, records
from mixer_scaling.config import compose
from mixer_scaling.engine import Interrupted
from mixer_scaling.errors import CorruptFile
from mixer_scaling.records import MetricsLog, read_record, run_id_of
from mixer_scaling.train import run

STOP_AT = 10  # checkpoints every 4 steps: the stop writes step 10, the one before is step 8


@pytest.fixture(scope="module")
def clean():
    return reference(QUICK)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped by SIGTERM at step 10: checkpoint.pt (step 10), checkpoint.prev.pt (step 8)."""
    runs_dir = tmp_path_factory.mktemp("stopped")
    cfg = compose([*QUICK, f"runs_dir={runs_dir}"])
    append = MetricsLog.append

    def stop(self, row):
        append(self, row)
        if row["step"] == STOP_AT:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MetricsLog, "append", stop)
        with pytest.raises(Interrupted):
            run(cfg)
    return runs_dir / run_id_of(cfg)


def stopped_run(stopped, tmp_path):
    """A copy of the stopped run to damage, and its config."""
    runs_dir = tmp_path / "runs"
    shutil.copytree(stopped, runs_dir / stopped.name)
    cfg = compose([*QUICK, f"runs_dir={runs_dir}"])
    assert checkpoint.load(runs_dir / stopped.name / records.CHECKPOINT_FILE)["step"] == STOP_AT
    return cfg, runs_dir / stopped.name


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bit flip":
        i = len(data) // 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


def finishes_like(clean, cfg, run_dir) -> dict:
    done = run(cfg)
    assert done["status"] == "done"
    assert losses(run_dir) == losses(clean["run_dir"])
    assert done["metrics"] == clean["metrics"]
    assert same_weights(weights(run_dir), weights(clean["run_dir"]))
    return done


# -- the checks themselves, at many byte offsets (fast: no training) ---------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A real checkpoint file of the tiny model (with its optimizer state)."""
    import torch

    from mixer_scaling.models import build_model

    model = build_model(compose(QUICK).model, num_classes=100, image_size=32)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = tmp_path_factory.mktemp("ckpt") / records.CHECKPOINT_FILE
    checkpoint.save(path, model=model, optimizer=opt, scheduler=sched, step=7, counters={})
    return path


@pytest.mark.parametrize("keep", [0, 1, 2, 100, 4096, 0.5, -49, -47, -1])
def test_a_checkpoint_cut_at_any_offset_is_refused(saved, tmp_path, keep):
    data = saved.read_bytes()
    cut = tmp_path / records.CHECKPOINT_FILE
    cut.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(CorruptFile, match="truncated") as info:
        checkpoint.load(cut)
    assert str(cut) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_a_flipped_bit_anywhere_is_refused(saved, tmp_path, where):
    data = bytearray(saved.read_bytes())
    data[int(where * (len(data) - 48))] ^= 0x10
    bad = tmp_path / records.CHECKPOINT_FILE
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match="SHA-256 mismatch"):
        checkpoint.load(bad)


def test_a_checkpoint_still_loads_with_plain_torch_load(saved):
    import torch

    assert torch.load(saved, weights_only=False)["step"] == 7  # the trailer does not lock users out


# -- a run meeting them --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["truncated", "bit flip"])
def test_damaged_checkpoint_resumes_from_the_previous_one(tmp_path, stopped, clean, how):
    cfg, run_dir = stopped_run(stopped, tmp_path)
    damage(run_dir / records.CHECKPOINT_FILE, how)

    done = finishes_like(clean, cfg, run_dir)
    said = [e["message"] for e in done["events"]]
    assert len(said) == 2, said
    assert said[0].startswith(f"{run_dir / records.CHECKPOINT_FILE}: ") and "moved to checkpoint.pt.corrupt" in said[0]
    assert said[1] == "resuming from checkpoint.prev.pt (step 8)"
    assert (run_dir / "checkpoint.pt.corrupt").exists()  # kept for inspection, never loaded


def test_no_checkpoint_verifies_restarts_from_scratch(tmp_path, stopped, clean):
    cfg, run_dir = stopped_run(stopped, tmp_path)
    damage(run_dir / records.CHECKPOINT_FILE, "truncated")
    damage(run_dir / "checkpoint.prev.pt", "empty")

    done = finishes_like(clean, cfg, run_dir)
    said = [e["message"] for e in done["events"]]
    assert len(said) == 3 and said[-1] == "no checkpoint verifies: training restarts from step 0", said
    assert done["examples_seen"] == clean["examples_seen"]


@pytest.mark.parametrize("content", [b"", b'{"status": "done", "metr', b"\x00" * 64, b"[1, 2]"])
def test_a_damaged_record_is_named_in_one_line(tmp_path, content):
    (tmp_path / records.RESULT_FILE).write_bytes(content)
    with pytest.raises(CorruptFile) as info:
        read_record(tmp_path)
    assert str(info.value).startswith(str(tmp_path / records.RESULT_FILE) + ": ") and "\n" not in str(info.value)


def test_damaged_result_json_is_set_aside_and_the_run_goes_on(tmp_path, stopped, clean):
    cfg, run_dir = stopped_run(stopped, tmp_path)
    damage(run_dir / records.RESULT_FILE, "truncated")

    done = finishes_like(clean, cfg, run_dir)
    said = [e["message"] for e in done["events"]]
    assert len(said) == 1 and "result.json: invalid JSON" in said[0] and "moved to result.json.corrupt" in said[0]
    assert (run_dir / "result.json.corrupt").exists()
    # the counters came back from the checkpoint: the cost covers both attempts' training
    assert done["train_seconds"] > 0 and done["attempts"] == 1


def test_a_save_cut_off_between_its_renames_resumes_from_the_previous_one(tmp_path, stopped, clean):
    """SIGKILL after ``checkpoint.pt`` → ``checkpoint.prev.pt`` and before temp → ``checkpoint.pt``."""
    cfg, run_dir = stopped_run(stopped, tmp_path)
    (run_dir / records.CHECKPOINT_FILE).rename(run_dir / "checkpoint.prev.pt")  # step 10's file, now the previous
    done = finishes_like(clean, cfg, run_dir)
    assert [e["message"] for e in done["events"]] == [
        "checkpoint.pt is missing (a save was cut off between its renames)",
        "resuming from checkpoint.prev.pt (step 10)"]
