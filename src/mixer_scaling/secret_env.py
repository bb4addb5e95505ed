"""Secrets in the environment never reach a written config: their names, and the check of a resolved
config (or a launcher's settings) against their values."""

from __future__ import annotations

import os
import re
from typing import Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError

#: Environment variables whose values are secrets: never written (records, configs, W&B, tables, sbatch
#: scripts, submitit's pickles). W&B's API key, and any name with an API_KEY, TOKEN, SECRET, PASSWORD or
#: ACCESS_KEY part (HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
SECRET_ENV = ("WANDB_API_KEY",)
SECRET_NAME = re.compile(r"(^|_)(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY)(_|$)")
#: A secret this short could be part of an ordinary value by chance (``seed``'s digits, a path part):
#: below it only an equal value counts.
SECRET_MIN_CONTAINED = 8


def secret_values() -> dict[str, str]:
    """``{name: value}`` of the secret environment variables set in this process (:data:`SECRET_ENV`,
    :data:`SECRET_NAME`)."""
    return {name: value for name, value in os.environ.items()
            if value.strip() and (name in SECRET_ENV or SECRET_NAME.search(name.upper()))}


def _strings(node, key: str = ""):
    """(dotted key, value) of every string in a resolved config (plain data or a DictConfig)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _strings(v, f"{key}[{i}]")
    elif isinstance(node, str):
        yield key, node


def check_no_secrets(node, prefix: str = "") -> None:
    """ConfigError when a resolved value is, or holds, the value of a secret environment variable (e.g.
    ``study=${oc.env:WANDB_API_KEY}``): a config is written to result.json, config.yaml, W&B, the results
    table and submitit's files. The one line names the keys (the shallowest first: the one a user sets,
    then those that follow it, like ``wandb.group: ${study}``) and the variable, never the value."""
    secrets = secret_values()
    if not secrets:
        return
    found: dict[str, list[str]] = {}
    for key, value in _strings(node, prefix):
        for name, secret in secrets.items():
            if value == secret or (len(secret) >= SECRET_MIN_CONTAINED and secret in value):
                found.setdefault(name, []).append(key)
    for name, keys in found.items():
        keys = sorted(keys, key=lambda k: (k.count(".") + k.count("["), keys.index(k)))
        also = f" (and so does {', '.join(keys[1:])})" if len(keys) > 1 else ""
        raise ConfigError(f"{keys[0]} holds the value of the secret environment variable {name}{also}, e.g. through "
                          f"${{oc.env:{name}}}; not allowed: a config is written to result.json, config.yaml, W&B "
                          f"and the results table, and a secret stays in the environment")
