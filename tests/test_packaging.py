"""A wheel installed without ``-e`` works from any directory: the configs and sweeps are package data,
found through Hydra's ``pkg://`` search path, not read from the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT, TINY


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project's wheel (no dependencies: they come from the test environment) in a fresh target folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("mixer_scaling-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(tmp / "site"), str(wheel)], check=True, capture_output=True, timeout=300)
    return wheel, tmp / "site"


def _run(site, cwd, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_holds_every_config_and_sweep(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.removeprefix("mixer_scaling/conf/") for n in names if n.startswith("mixer_scaling/conf/")
               and n.endswith(".yaml")}
    in_tree = {str(p.relative_to(ROOT / "src" / "mixer_scaling" / "conf"))
               for p in (ROOT / "src" / "mixer_scaling" / "conf").rglob("*.yaml")}
    assert shipped == in_tree and "sweep/pareto.yaml" in shipped and "config.yaml" in shipped
    assert "hydra_plugins/mixer_scaling_user_config/__init__.py" in names  # the user config directory's plugin


def test_commands_work_from_another_directory(installed, tmp_path):
    _, site = installed
    where = _run(site, tmp_path, "-c", "import mixer_scaling; print(mixer_scaling.__file__)")
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr  # not the repository's copy

    models = _run(site, tmp_path, "-m", "mixer_scaling.cli", "models", "--json")
    assert models.returncode == 0, models.stderr
    assert {"mixer/b16", "vit/h14", "bit/r50x1"} <= {m["name"] for m in json.loads(models.stdout)}

    job = _run(site, tmp_path, "-m", "mixer_scaling.train", "--cfg", "job", "model=vit/tiny")
    assert job.returncode == 0 and "name: vit/tiny" in job.stdout, job.stderr

    dry = _run(site, tmp_path, "-m", "mixer_scaling.cli", "sweep", "launch", "smoke", "--executor", "local",
               "--dry-run", f"runs_dir={tmp_path / 'runs'}")
    assert dry.returncode == 0 and "smoke" in dry.stdout, dry.stdout + dry.stderr
    assert not (tmp_path / "runs").exists()

    run = _run(site, tmp_path, "-m", "mixer_scaling.train", *TINY, f"runs_dir={tmp_path / 'runs'}",
               "progress=false")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    record = json.loads(next((tmp_path / "runs").glob("*/result.json")).read_text())
    assert record["status"] == "done"
