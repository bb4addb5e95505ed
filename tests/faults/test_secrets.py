"""A W&B API key in the environment never lands in a file the framework writes.

With ``WANDB_API_KEY`` set to a random 40-hex key (fixed seed) and ``WANDB_MODE=offline``, a real
run (W&B's client included: ``wandb.mode=auto`` sees the key, the environment keeps it offline), a sweep
dry run and the sbatch script submitit would submit, ``collect`` into parquet and CSV, and ``figures``
all write under one temporary folder (W&B's config, cache and data folders too). Every byte of every
file there, and everything printed, is searched for the key: as text, as UTF-16, in base64 at each of
the three alignments, and in the ``api:<key>`` form of HTTP basic auth.

No config key carries a key (there is no ``wandb.api_key``; the W&B client reads the environment), so
there is no override to test.
"""

from __future__ import annotations

import base64
import random
import shutil
import sys
from pathlib import Path

import pytest

from conftest import TINY
from secret_scan import KEY, leaks, needles
from mixer_scaling import cli, train

# A tiny run with W&B on: the cheapest run that still writes every kind of file a run writes.
RUN = [o for o in TINY if not o.startswith(("wandb.mode", "train.examples_seen", "fewshot.shots", "data.size",
                                            "data.val_size"))] + [
    "model=mixer/micro", "train.examples_seen=128", "data.size=256", "data.val_size=64",
    "fewshot.datasets=[digits]", "fewshot.shots=[1]", "fewshot.seeds=[0]", "wandb.mode=auto"]


def test_the_scanner_finds_a_planted_key(tmp_path):
    """Positive control: the search finds the key in each form it looks for, inside other bytes."""
    for i, (form, needle) in enumerate(needles(KEY).items()):
        (tmp_path / f"f{i}.bin").write_bytes(b"\x00\xffprefix" + needle + b"suffix\n")
    embedded = base64.b64encode(b"xy" + KEY.encode() + b"z")  # the key inside a longer base64 blob
    (tmp_path / "blob.txt").write_bytes(embedded)
    found = leaks(tmp_path, KEY)
    assert len({f.split(":")[0] for f in found}) == len(needles(KEY)) + 1, found
    assert leaks(tmp_path, f"{random.Random(1).getrandbits(160):040x}") == []


def test_the_api_key_never_reaches_a_file(tmp_path, monkeypatch, capsys, caplog):
    home = tmp_path / "home"
    for var, sub in (("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_CACHE_DIR", "wandb-cache"),
                     ("WANDB_DATA_DIR", "wandb-data"), ("WANDB_ARTIFACT_DIR", "wandb-artifacts")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the key would make `auto` go online; nothing leaves here
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    from mixer_scaling.tracking import api_key_configured, resolve_mode

    assert api_key_configured() and resolve_mode("auto") == "offline"  # the key is seen; WANDB_MODE wins

    # 1. a run, with W&B's client writing its offline files into the run directory
    monkeypatch.setattr(sys, "argv", ["mixer_scaling.train", *RUN, f"runs_dir={runs}"])
    try:
        train.main()
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    [run_dir] = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B wrote nothing: the test would prove little"
    assert '"mode": "offline"' in (run_dir / "result.json").read_text()

    # 2. a sweep dry run (no SLURM on PATH: the grid, the cost and the launcher parameters are printed)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert cli.main(["sweep", "launch", "smoke", f"runs_dir={runs}", "--executor", "slurm", "--dry-run"]) == 0

    # 3. the results table and the figures
    assert cli.main(["collect", str(runs), "-o", str(tmp_path / "results.parquet"),
                     "--csv", str(tmp_path / "results.csv")]) == 0
    assert cli.main(["figures", str(tmp_path / "results.parquet"), "-o", str(tmp_path / "figures"),
                     "--k", "1", "--boot", "0"]) == 0

    printed = capsys.readouterr()
    # what a job's log file would hold: everything printed and logged
    (tmp_path / "printed.txt").write_text(printed.out + printed.err + caplog.text)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20 and (tmp_path / "results.csv").exists() and (tmp_path / "figures").is_dir()
    assert leaks(tmp_path, KEY) == [], "the W&B API key was written to these files"


def test_the_sbatch_script_holds_no_key(tmp_path, monkeypatch):
    """The sbatch script submitit would submit for the smoke sweep (built without a cluster; the lead's
    SLURM tests cover a real submission)."""
    from mixer_scaling import launch
    from mixer_scaling.sweep import load

    if shutil.which("srun") is None:
        pytest.skip("submitit builds its SLURM executor only where srun is installed")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    runs = tmp_path / "runs"
    sweep = load("smoke", [f"runs_dir={runs}"])
    plan = launch.plan(sweep, "slurm", check_cluster=False)
    for preset, cells in plan.groups():
        ex = launch.make_executor("slurm", plan.params[preset], plan.log_folder(runs), sweep.name)
        (tmp_path / f"{preset}.sbatch").write_text(launch.sbatch_script(ex, len(cells)))
    assert "#SBATCH --array=0-1" in (tmp_path / "cpu.sbatch").read_text()
    assert leaks(tmp_path, KEY) == []
