"""The one private library name the project uses (submitit's sbatch rendering, src/mixer_scaling/submitit_adapter.py)
still does what the dry run and the launch checks rely on; an upgrade that changes it fails here, by name."""

from __future__ import annotations

from pathlib import Path

import submitit

from mixer_scaling import launch, submitit_adapter

ADAPTER = "src/mixer_scaling/submitit_adapter.py"


def test_submitit_is_the_pinned_version():
    assert submitit.__version__ == submitit_adapter.PINNED, (
        f"submitit {submitit.__version__} is installed, {submitit_adapter.PINNED} is pinned: check {ADAPTER} "
        "against the new release, then update PINNED and constraints.txt")
    pins = (Path(__file__).resolve().parents[1] / "constraints.txt").read_text()
    assert f"submitit=={submitit_adapter.PINNED}" in pins


def test_the_sbatch_script_of_an_array_is_rendered_without_submitting(tmp_path):
    params = launch.launcher_params("slurm", "gpu1", ["hydra.launcher.partition=gpu-long"])
    ex = launch.make_executor("slurm", params, tmp_path / "logs", "adapter")
    script = submitit_adapter.sbatch_script(ex, 3)
    assert script.startswith("#!/bin/bash"), f"{ADAPTER}: submitit no longer renders an sbatch script this way"
    for line in ("#SBATCH --array=0-2", "#SBATCH --partition=gpu-long", "#SBATCH --job-name=adapter",
                 "#SBATCH --gpus-per-node=1"):
        assert line in script, f"{ADAPTER}: {line!r} missing from submitit's script:\n{script}"
    assert "--array" not in submitit_adapter.sbatch_script(ex, 1)  # the executor's own parameters are left as they were
    assert not any((tmp_path / "logs").rglob("*.sh")), "rendering must not write the script"
