"""A W&B API key in the environment never lands in a file the framework writes.

With ``WANDB_API_KEY`` set to a random 40-hex key (fixed seed) and ``WANDB_MODE=offline``, a real
run (W&B's client included: ``wandb.mode=auto`` sees the key, the environment keeps it offline), a sweep
dry run and the sbatch script submitit would submit, ``collect`` into parquet and CSV, and ``figures``
all write under one temporary folder (W&B's config, cache and data folders too). Every byte of every
file there, and everything printed, is searched for the key: as text, as UTF-16, in base64 at each of
the three alignments, and in the ``api:<key>`` form of HTTP basic auth.

No config key carries a key (there is no ``wandb.api_key``; the W&B client reads the environment), but an
interpolation can reach one: ``'study=${oc.env:WANDB_API_KEY}'`` would put the key into every file a run
writes. Such a config is refused when it is composed (one line naming the key and the variable, never the
value; exit 2; nothing created), by every entry point, in real processes (the tests at the end).
"""

from __future__ import annotations

import base64
import random
import re
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


# ---------------------------------------------------------------------------------------------
# A secret reached through an interpolation (issue 16, item 4): refused at compose time
# ---------------------------------------------------------------------------------------------

OTHER_SECRET = f"hf_{random.Random(7).getrandbits(128):032x}"  # a token under another secret name


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"dir" for p in sorted(folder.rglob("*"))}


def _refused(tmp_path: Path, args: list[str], key: str, variable: str = "WANDB_API_KEY", secret: str = KEY) -> None:
    """``python <args>`` in a real process with the secrets in its environment: exit 2, one line naming
    ``key`` and the variable, the secret in no output and no file, nothing created."""
    import os
    import subprocess

    (tmp_path / "keep.txt").write_text("a file that was here before\n")
    before = _snapshot(tmp_path)
    env = {**os.environ, "WANDB_API_KEY": KEY, "HF_TOKEN": OTHER_SECRET, "WANDB_MODE": "offline",
           "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr, lines
    # (sweep launch names the cell first: `error: cell model=mixer/micro ...: study holds ...`)
    assert re.match(rf"error: (cell .*: )?{re.escape(key)} holds the value of the secret environment variable "
                    rf"{variable}\b", lines[0]), lines
    assert _snapshot(tmp_path) == before  # no runs/, multirun/, wandb/, .sweeps manifest, nothing changed
    printed = tmp_path.parent / f"{tmp_path.name}-printed"
    printed.mkdir(exist_ok=True)
    (printed / "output.txt").write_text(proc.stdout + proc.stderr)
    assert leaks(printed, secret) == [] and leaks(tmp_path, secret) == []


RUN_ARGS = ["-m", "mixer_scaling.train", *RUN, "wandb.mode=offline", "runs_dir=runs"]


def test_a_secret_interpolated_into_a_value_is_refused_by_train(tmp_path):
    _refused(tmp_path, [*RUN_ARGS, "study=${oc.env:WANDB_API_KEY}"], "study")


def test_a_value_containing_a_secret_is_refused(tmp_path):
    """Inside a longer string, in a list (W&B tags are uploaded), under another secret name."""
    _refused(tmp_path, [*RUN_ARGS, "wandb.tags=[x,key-${oc.env:WANDB_API_KEY}-end]"], "wandb.tags[1]")
    _refused(tmp_path, [*RUN_ARGS, "+note=${oc.env:HF_TOKEN}"], "note", "HF_TOKEN", OTHER_SECRET)


def test_a_secret_is_refused_by_hydra_multirun_and_sweep_launch(tmp_path):
    _refused(tmp_path, ["-m", "mixer_scaling.train", "-m", "+sweep=smoke", "runs_dir=runs",
                        "study=${oc.env:WANDB_API_KEY}"], "study")
    _refused(tmp_path, ["-m", "mixer_scaling.cli", "sweep", "launch", "smoke", "runs_dir=runs", "--executor", "local",
                        "study=${oc.env:WANDB_API_KEY}"], "study")


def test_a_secret_in_a_launcher_setting_is_refused(tmp_path):
    """What submitit writes into the sbatch script and its pickles."""
    _refused(tmp_path, ["-m", "mixer_scaling.train", "-m", "+sweep=smoke", "runs_dir=runs", "hydra/launcher=slurm",
                        "hydra.launcher.setup=['export K=${oc.env:WANDB_API_KEY}']"], "hydra.launcher.setup[0]")


def test_ordinary_environment_values_are_not_secrets(monkeypatch):
    """Only the secret names count, and a short value must match a whole value, not a part of one."""
    from mixer_scaling.config import check_no_secrets, compose, secret_values, validate

    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("MY_PROJECT", "jft-study")
    monkeypatch.setenv("GITHUB_TOKEN", "0")  # too short to search inside other values
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # not a secret's name
    assert set(secret_values()) >= {"WANDB_API_KEY", "GITHUB_TOKEN"}
    assert "MY_PROJECT" not in secret_values() and "TOKENIZERS_PARALLELISM" not in secret_values()
    validate(compose(["study=${oc.env:MY_PROJECT}", "seed=10", "runs_dir=/tmp/runs0"]))
    check_no_secrets({"study": "x0y", "seed": 0})
    with pytest.raises(Exception, match=r"^study holds the value of the secret environment variable GITHUB_TOKEN"):
        check_no_secrets({"study": "0"})
