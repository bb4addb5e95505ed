"""The user's own config directory: a researcher's clusters, sweeps and model sizes beside the shipped ones.

The directory is ``$MIXER_SCALING_CONFIG``, else ``~/.config/mixer-scaling``. When it exists it is added to
Hydra's config search path after the package's own configs (``pkg://mixer_scaling.conf``), by the search
path plugin in ``hydra_plugins/mixer_scaling_user_config/``: so every Hydra app of the package and
:func:`mixer_scaling.config.compose` see the same files. It mirrors ``conf/``'s groups:

    <dir>/cluster/<name>.yaml     a cluster: partition, account, QoS, setup lines, sbatch options, its GPU
    <dir>/sweep/<name>.yaml       a sweep (mixer-scaling sweep launch <name>)
    <dir>/model/<family>/<size>.yaml, data/, train/ ...   more options of the shipped groups

A shipped option wins over a user file of the same name (shipped configs stay what runs were made with).
``cluster/default.yaml`` is used by every command without ``cluster=<name>``; ``~cluster`` turns it off.

This module is imported by the search path plugin during Hydra's plugin discovery: standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "MIXER_SCALING_CONFIG"
DEFAULT_DIR = "~/.config/mixer-scaling"
# What `mixer-scaling init` creates beside the cluster file: the groups a user adds options to.
LAYOUT = ("cluster", "sweep", "model")
CLUSTER_GROUP = "cluster"


def user_config_dir() -> Path:
    """The user config directory (it may not exist): ``$MIXER_SCALING_CONFIG``, else ``~/.config/mixer-scaling``."""
    return Path(os.environ.get(ENV) or DEFAULT_DIR).expanduser().resolve()


def search_dirs() -> list[Path]:
    """The user config directory when it exists (what the search path plugin adds), else nothing."""
    path = user_config_dir()
    return [path] if path.is_dir() else []


STARTER = """\
# Cluster `{name}`: what every SLURM job of mixer-scaling asks for on it, and its GPU.
# Used with cluster={name}{default_note}. A key left null is not passed to sbatch.
# Any hydra.launcher.<key>=... on the command line still wins over these.
name: {name}
partition: null          # sbatch --partition, e.g. gpu
account: null            # sbatch --account
qos: null                # sbatch --qos
setup:                   # shell lines run in the sbatch script before srun (replace the default line)
  - export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
  # - module load cuda/12.4
  # - source ~/envs/mixer/bin/activate
additional_parameters: {{}}   # any other sbatch option, e.g. {{constraint: a100, mail-type: END}}
gpu_type: a100-80gb      # a label, recorded with each run's config
gpu_memory_gb: 80        # one GPU's memory: what `sweep launch` fits each cell's micro-batch into
gpu_tflops: 312          # one GPU's peak bf16 dense TFLOP/s: the cost estimate of `sweep launch`
"""


def write_starter(name: str, directory: Path | None = None) -> Path:
    """Write a commented starter ``cluster/<name>.yaml`` (and the folder layout) into ``directory`` (default:
    :func:`user_config_dir`). Returns its path. Raises FileExistsError when the file exists (never overwritten)."""
    root = (directory or user_config_dir()).expanduser()
    path = root / CLUSTER_GROUP / f"{name}.yaml"
    if path.exists():
        raise FileExistsError(path)
    for group in LAYOUT:
        (root / group).mkdir(parents=True, exist_ok=True)
    note = " or, as the file named default.yaml, without it; ~cluster turns it off" if name == "default" else ""
    with open(path, "x", encoding="utf-8") as f:  # "x": an existing file is never overwritten, even in a race
        f.write(STARTER.format(name=name, default_note=note))
    return path
