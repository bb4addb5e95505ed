"""Disk full while writing a checkpoint: a real, small tmpfs mounted by the test holds the run directory.

It has room for one checkpoint but not for a second one being written beside it. The run must fail with a
record that says so in one line, leave no partial file, keep the previous checkpoint intact, and, once
there is room again, resume from that checkpoint and end exactly as a run that never hit a full disk.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from fault_helpers import QUICK, losses, reference, same_weights, weights
from mixer_scaling import checkpoint, records
from mixer_scaling.checkpoint import CheckpointWriteError
from mixer_scaling.config import compose
from mixer_scaling.records import read_record, run_id_of
from mixer_scaling.train import run

SLACK = 256 * 1024  # config.yaml, result.json, metrics.jsonl


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a given size at tmp_path/disk (root in a container that allows mounts)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = []

    def mount(size: int, remount: bool = False) -> bool:
        opts = f"{'remount,' if remount else ''}size={size}"
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount_point)],
                            capture_output=True).returncode == 0
        if ok and not remount:
            mounted.append(mount_point)
        return ok

    yield mount_point, mount
    for m in mounted:
        subprocess.run(["umount", str(m)], check=True)


def test_disk_full_mid_checkpoint_fails_clearly_and_keeps_the_previous_one(small_disk, monkeypatch):
    clean = reference(QUICK)
    ckpt_size = (records.Path(clean["run_dir"]) / records.CHECKPOINT_FILE).stat().st_size
    disk, mount = small_disk
    on_tmpfs = mount(ckpt_size * 3 // 2 + SLACK)
    if not on_tmpfs:
        # No mounts allowed here: make the checkpoint write itself fail as a full disk would, half-way.
        real_write_temp = checkpoint.write_temp
        seen = []

        def full_after_first(path, data):
            seen.append(path)
            if len(seen) > 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write_temp(path, data)

        monkeypatch.setattr(checkpoint, "write_temp", full_after_first)
    cfg = compose([*QUICK, f"runs_dir={disk / 'runs'}"])
    run_dir = disk / "runs" / run_id_of(cfg)

    with pytest.raises(CheckpointWriteError):
        run(cfg)
    failed = read_record(run_dir)
    assert failed["status"] == "failed"
    message = failed["error"]["message"]
    assert message.startswith("could not write the checkpoint of step 8 (") and "\n" not in message
    assert "No space left on device" in message and f"previous checkpoint is kept at {run_dir}/checkpoint.pt" in message
    assert checkpoint.load(run_dir / records.CHECKPOINT_FILE)["step"] == 4  # intact, and verifies
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp"))  # no partial file left behind

    # room again (a bigger quota, or the run directory moved): it resumes from step 4
    monkeypatch.undo()
    if on_tmpfs:
        assert mount(ckpt_size * 4 + SLACK, remount=True)
    done = run(cfg)
    assert done["status"] == "done" and done["attempts"] == 2 and "error" not in done
    assert losses(run_dir) == losses(clean["run_dir"])
    assert same_weights(weights(run_dir), weights(clean["run_dir"]))
    assert done["metrics"] == clean["metrics"]
