"""The values of a submitit launcher's config (``hydra.launcher``): in range, single lines, no secrets."""

from __future__ import annotations

from typing import Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError
from .secret_env import check_no_secrets

def resolve_leaves(node):
    """A config as plain data, each value resolved where it can be here and left as written where it cannot
    (``${hydra.sweep.dir}`` resolves only inside a running app; ``${oc.env:...}`` does here)."""
    keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
    out = [] if isinstance(node, ListConfig) else {}
    written = None
    for k in keys:
        try:
            value = node[k]
        except Exception:
            written = OmegaConf.to_container(node, resolve=False) if written is None else written
            value = written[k]
        if isinstance(value, (DictConfig, ListConfig)):
            value = resolve_leaves(value)
        if isinstance(out, list):
            out.append(value)
        else:
            out[k] = value
    return out


# Launcher values that must be whole numbers at least this large (hydra-submitit-launcher's schema types them).
LAUNCHER_MINIMUMS = {"timeout_min": 1, "cpus_per_task": 1, "tasks_per_node": 1, "nodes": 1, "mem_gb": 1,
                     "gpus_per_node": 0, "array_parallelism": 1, "max_num_timeout": 0, "signal_delay_s": 0}


def check_launcher_values(node: Mapping, prefix: str = "hydra.launcher") -> None:
    """Values of the submitit launcher config: counts in range, and no line breaks anywhere, since every
    value ends up in the sbatch script (a newline there would inject a shell line into the job)."""
    if prefix == "hydra.launcher":
        check_no_secrets(node, prefix)  # the launcher's settings land in the sbatch script and submitit's files
    for key, value in node.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            check_launcher_values(value, name)
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and ("\n" in item or "\r" in item):
                raise ConfigError(f"{name}={item!r} is not allowed: it holds a line break, which would inject a "
                                  "line into the sbatch script; expected a single line")
        minimum = LAUNCHER_MINIMUMS.get(key) if prefix == "hydra.launcher" else None
        if minimum is not None and value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ConfigError(f"{name}={value!r} is not allowed; expected an integer >= {minimum}")


SUBMITIT_LAUNCHERS = ("slurm", "local", "submitit_slurm", "submitit_local")
