"""Where a run writes, checked before anything is built (issue 16, items 8, 9 and 11).

``python -m mixer_scaling.train`` with a ``runs_dir`` on a read-only file system, with a folder name over
255 bytes, or under a file: one line naming ``runs_dir`` and why, exit 2, nothing created (a run that is
already done on read-only storage is still reported done). An unquoted override Hydra cannot read says to
quote it. With ``HOME`` unset, W&B's client prints nothing. All in real processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, run_cli

RUN = [*TINY, "model=mixer/micro", "fewshot.datasets=[digits]", "fewshot.shots=[1]", "eval.throughput_batch_sizes=[8]"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else p.read_bytes().hex()[:64]
            for p in sorted(folder.rglob("*"))}


def one_line_exit_2(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    return lines[0]


@pytest.fixture
def read_only_disk(tmp_path):
    """A real tmpfs at tmp_path/disk, to be remounted read-only (root in a container that allows mounts)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")

    def read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)

    yield disk, read_only
    subprocess.run(["umount", str(disk)], check=True)


def test_a_read_only_runs_dir_is_one_line_and_a_done_run_is_still_done(tmp_path, read_only_disk):
    disk, read_only = read_only_disk
    done_runs = disk / "done"
    first = run_cli(["-m", "mixer_scaling.train", *RUN, f"runs_dir={done_runs}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    read_only()
    before = snapshot(disk), snapshot(tmp_path)

    line = one_line_exit_2(run_cli(["-m", "mixer_scaling.train", *RUN, f"runs_dir={disk / 'runs'}"], cwd=tmp_path))
    assert line == (f"error: runs_dir={disk / 'runs'}: cannot create it or write beside it in {disk} (it is on a "
                    "read-only file system); expected a folder that exists or can be created, in a writable place")
    # another config in the runs_dir that holds the finished run: refused the same way
    other = one_line_exit_2(run_cli(["-m", "mixer_scaling.train", *RUN, "seed=1", f"runs_dir={done_runs}"], cwd=tmp_path))
    assert f"runs_dir={done_runs}: cannot write into it (it is on a read-only file system)" in other
    # the finished run on read-only storage: reported done, nothing written
    again = run_cli(["-m", "mixer_scaling.train", *RUN, f"runs_dir={done_runs}"], cwd=tmp_path)
    assert again.returncode == 0 and "not retraining" in again.stdout + again.stderr, again.stderr[-3000:]
    assert (snapshot(disk), snapshot(tmp_path)) == before


def test_a_folder_this_user_cannot_write(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into any folder: the read-only file system test covers it")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    line = one_line_exit_2(run_cli(["-m", "mixer_scaling.train", *RUN, f"runs_dir={locked / 'runs'}"], cwd=tmp_path))
    assert f"runs_dir={locked / 'runs'}" in line and "cannot create it" in line and "permission denied" in line


def test_a_long_folder_name_or_a_file_in_the_way(tmp_path):
    (tmp_path / "notes.txt").write_text("a file\n")
    before = snapshot(tmp_path)
    long_line = one_line_exit_2(run_cli(["-m", "mixer_scaling.train", *RUN, f"runs_dir={tmp_path / ('r' * 300)}"],
                                        cwd=tmp_path))
    assert "runs_dir=" in long_line and "300 bytes long" in long_line and "at most 255 bytes" in long_line
    file_line = one_line_exit_2(run_cli(["-m", "mixer_scaling.train", *RUN, f"runs_dir={tmp_path / 'notes.txt' / 'runs'}"],
                                        cwd=tmp_path))
    assert file_line == (f"error: runs_dir={tmp_path / 'notes.txt' / 'runs'}: {tmp_path / 'notes.txt'} is a file, "
                         "not a folder; expected a folder that exists or can be created, in a writable place")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("override,char", [("data.root=/data/données", "é"), ("study=ok#1", "#")])
def test_an_unquoted_value_hydra_cannot_read_says_to_quote_it(tmp_path, override, char):
    key, _, value = override.partition("=")
    line = one_line_exit_2(run_cli(["-m", "mixer_scaling.train", override], cwd=tmp_path))
    assert line == (f"error: invalid override {override!r}: the character {char!r} cannot be read unquoted (Hydra's "
                    f"override grammar reads ASCII letters, digits and a few symbols unquoted); quote the value, "
                    f"e.g. \"{key}='{value}'\"")
    assert os.listdir(tmp_path) == []
    # quoted as it says, the value is read (here: the next check, the data root, speaks)
    quoted = run_cli(["-m", "mixer_scaling.train", f"{key}='{value}'", "data=imagefolder"], cwd=tmp_path)
    assert "invalid override" not in quoted.stderr


def test_wandb_is_quiet_without_home(tmp_path):
    """W&B's client with HOME unset (a batch job's environment): the run's output is what it is with HOME set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "HOME"}
    env["WANDB_MODE"] = "offline"
    args = ["-m", "mixer_scaling.train", *[o for o in RUN if not o.startswith("wandb.")], "wandb.mode=offline"]
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, *args, f"runs_dir={runs}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # W&B's service logs (`2026/12/06 23:36:39 INFO server: ...`, ~20 lines) and its client's `wandb: ...` lines
    noise = [line for line in (proc.stdout + proc.stderr).splitlines()
             if re.match(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ ", line) or line.startswith("wandb:")]
    assert noise == [], noise
    assert proc.stderr == "", proc.stderr
    [run_dir] = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert list((run_dir / "wandb").glob("offline-run-*"))
