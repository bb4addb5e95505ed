"""Composing and checking configs, outside and before any Hydra app runs.

Hydra reports a bad override as a multi-line message and exit code 1, after it may already have made
output folders. Every entry point calls :func:`check_overrides` first: it composes the config the
same way (expanding ``a,b`` sweeps), runs the cheap semantic checks, and turns any problem into one
line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Iterable, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, UserError, one_line

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PRIMARY = "config"
GROUPS = ("model", "data", "train", "fewshot", "wandb")


def group_options(group: str) -> list[str]:
    """Options of a config group, e.g. ``model`` → ['bit/r101x1', ..., 'vit/tiny']."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The run config for ``overrides`` (no Hydra app, nothing written). Raises ConfigError."""
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    for o in overrides:
        _check_group_choice(o)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=PRIMARY, overrides=list(overrides))
    except UserError:
        raise
    except Exception as exc:
        raise ConfigError(_explain(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ConfigError(f"cannot resolve the config: {one_line(exc)}") from None
    return cfg


def _check_group_choice(override: str) -> None:
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if not sep or key not in GROUPS:
        return
    options = group_options(key)
    for choice in value.split(","):
        if choice not in options:
            raise ConfigError(f"{key}={choice!r} is not a known {key} config; choose one of: {', '.join(options)}")


def _explain(exc: Exception) -> str:
    msg = str(exc)
    m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"Key '([^']+)' is not in struct", msg)
    if m:
        key = m.group(1)
        parent = key.rpartition(".")[0]
        try:
            known = sorted(OmegaConf.select(compose(), parent).keys()) if parent else []
        except Exception:
            known = []
        allowed = f"; keys under {parent}: {', '.join(map(str, known))}" if known else ""
        return f"unknown config key '{key}'{allowed} (prefix with + to add a new key)"
    return one_line(exc)


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's basic sweep expansion: ``a=1,2 b=x`` → [[a=1, b=x], [a=2, b=x]]."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(f"invalid override: {one_line(exc)}") from None
    axes = []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ConfigError(f"{key}: only comma-separated sweeps are supported, got {o.input_line!r}")
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([f"{key}={o.get_value_element_as_str()}"])
    return [list(cell) for cell in itertools.product(*axes)]


def validate(cfg: DictConfig) -> None:
    """Cheap semantic checks of a composed run config (no data is read, nothing is built)."""
    from .data import validate_data_cfg
    from .engine import check_train_cfg
    from .models import check_model_cfg
    from .tracking import resolve_mode

    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not allowed; expected an integer >= 0")
    check_model_cfg(cfg.model, image_size=cfg.data.image_size)
    validate_data_cfg(cfg.data)
    check_train_cfg(cfg.train)
    resolve_mode(cfg.wandb.mode)
    if str(cfg.device) not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", str(cfg.device)):
        raise ConfigError(f"device={cfg.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")


def check_overrides(argv: Iterable[str]) -> int:
    """Compose and validate every cell an app's command line would run. Returns the number of cells."""
    args = list(argv)
    overrides = [a for a in args if not a.startswith("-")]
    cells = expand(overrides) if any(a in ("-m", "--multirun") for a in args) else [overrides]
    for cell in cells:
        validate(compose(cell))
    return len(cells)
