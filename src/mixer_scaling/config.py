"""Composing and checking configs, outside and before any Hydra app runs.

Hydra reports a bad override as a multi-line message and exit code 1, after it may already have made
output folders. Every entry point calls :func:`check_overrides` first: it composes the config the
same way (expanding ``a,b`` sweeps), runs the cheap semantic checks, and turns any problem into one
line naming the key, the bad value and what is allowed.

Its parts have their own modules, re-exported here (``from .config import ...`` keeps working):
:mod:`.groups` (where configs live, group options), :mod:`.overrides` (argv, sweep expansion, override
checks, one-line errors), :mod:`.launcher_checks` (launcher values), :mod:`.secret_env` (secrets).
"""

from __future__ import annotations

import json
import pickle
from typing import Iterable, Iterator, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, UserError, one_line
from .groups import CONF_DIR, CONF_MODULE, GROUPS, OPTIONAL_GROUPS, config_dirs, group_options, is_group
from .launcher_checks import LAUNCHER_MINIMUMS, SUBMITIT_LAUNCHERS, check_launcher_values, resolve_leaves
from .overrides import (RENAMED, VALUE_FLAGS, check_group_choice, check_line_breaks, expand, explain,
                        fixed_overrides, split_argv)
from .secret_env import SECRET_ENV, SECRET_MIN_CONTAINED, SECRET_NAME, check_no_secrets, secret_values

__all__ = [  # what other modules import from here, wherever it lives now
    "CONF_DIR", "CONF_MODULE", "GROUPS", "LAUNCHER_MINIMUMS", "OPTIONAL_GROUPS", "PRIMARY", "RENAMED", "SECRET_ENV",
    "SECRET_MIN_CONTAINED", "SECRET_NAME", "SUBMITIT_LAUNCHERS", "VALUE_FLAGS", "check_launcher",
    "check_launcher_values", "check_no_secrets", "check_overrides", "check_runs_dir", "compose", "compose_many",
    "config_dirs", "expand", "fixed_overrides", "grid", "group_options", "is_group", "missing_keys",
    "secret_values", "split_argv", "validate",
]

PRIMARY = "config"


def compose(overrides: Sequence[str] = (), with_hydra: bool = False, resolve: bool = True,
            config_name: str = PRIMARY) -> DictConfig:
    """The run config for ``overrides`` (no Hydra app, nothing written). Raises ConfigError.

    ``with_hydra`` keeps ``hydra.*`` overrides and returns the ``hydra`` node too (its launcher and
    sweeper settings; left unresolved, since parts of it only resolve inside a running app).
    ``resolve=False`` skips resolving the rest (a sweep's base config may only resolve per cell).
    ``config_name`` picks another primary config of ``conf/`` (the fine-tune app's ``finetune``).
    """
    if not with_hydra:  # resources presets fill hydra.launcher too: neither changes the run config
        overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra", "resources="))]
    check_line_breaks(overrides)
    for o in overrides:
        check_group_choice(o)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    except UserError:
        raise
    except Exception as exc:
        raise ConfigError(explain(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return _resolve(cfg) if resolve else cfg


def _resolve(cfg: DictConfig) -> DictConfig:
    """Resolve every interpolation outside ``hydra`` in place (ConfigError naming the problem)."""
    try:
        for key in list(cfg.keys()):
            if key == "hydra":
                continue
            node = None if OmegaConf.is_interpolation(cfg, key) else cfg[key]
            if isinstance(node, (DictConfig, ListConfig)):
                OmegaConf.resolve(node)
            else:
                cfg[key] = cfg[key]  # an interpolation or a scalar: reading it resolves it
    except Exception as exc:
        raise ConfigError(f"cannot resolve the config: {one_line(exc)}") from None
    return cfg


def compose_many(cells: Iterable[Sequence[str]]) -> Iterator[DictConfig]:
    """``compose(cell)`` for every cell of a grid, in order, ~50x faster on large grids.

    Composing a config is two steps in Hydra: the defaults list (the config-group choices, e.g.
    ``model=mixer/tiny``, ``+sweep=demo``) is composed from the YAML files, then the value overrides
    (``seed=3``, ``data.fraction=0.1``) are applied to the result. Cells of a grid share a few group
    choices and differ in values, so the first step is done once per distinct list of group overrides
    and cached; the second applies each plain ``key=value`` to a copy as Hydra does (``OmegaConf.update``
    with merge), so each config equals what :func:`compose` returns (tested). A cell with anything else
    (``+key=value`` other than a group choice, ``++``/``~`` keys, a sweep value, an unparsable override, a
    key that is not there) goes through :func:`compose`, which gives Hydra's result or the usual one-line error.
    """
    parser = OverridesParser.create()
    parsed: dict[str, object] = {}      # override string -> its parsed Override (or None: not cacheable)
    checked: set[str] = set()
    bases: dict[tuple[str, ...], bytes] = {}  # pickled: unpickling is ~4x faster than a deepcopy
    group_keys: dict[str, bool] = {}    # override key -> whether it chooses a config group
    for cell in cells:
        overrides = [o for o in cell if not o.lstrip("+~").startswith(("hydra", "resources="))]
        for o in overrides:
            if o not in checked:
                check_group_choice(o)
                checked.add(o)
        group, values, simple = [], [], True
        for o in overrides:
            if o not in parsed:
                try:
                    parsed[o] = parser.parse_override(o)
                except Exception:
                    parsed[o] = None
            ov = parsed[o]
            if ov is None or ov.is_sweep_override() or ov.is_force_add() or ov.is_delete() \
                    or ov.package is not None:
                simple = False
                break
            key = ov.key_or_group
            if key not in group_keys:
                group_keys[key] = "/" in key or is_group(key)
            chooses = group_keys[key] and not isinstance(ov.value(), dict)
            if ov.is_add() and not chooses:  # +key=value adds a key: only a group choice (+sweep=demo) is cached
                simple = False
                break
            if chooses:
                group.append(o)
            else:
                values.append(ov)
        if not simple:
            yield compose(cell)
            continue
        key = tuple(group)
        if key not in bases:
            base = compose(group, resolve=False)
            bases[key] = (pickle.dumps(base), _interpolations(base))
        blob, interpolations = bases[key]
        cfg = pickle.loads(blob)
        try:
            for ov in values:
                OmegaConf.update(cfg, ov.key_or_group, ov.value(), merge=True)
        except Exception:  # compose gives Hydra's own result or error for it
            yield compose(cell)
            continue
        if any("${" in str(ov.value()) for ov in values):  # an override brings its own interpolation
            yield _resolve(cfg)
            continue
        try:  # only the base's interpolation nodes can need resolving: resolve those, as _resolve would
            for path, name in interpolations:
                parent = cfg
                for part in path:  # containers, never interpolations (see _interpolations)
                    parent = parent[part]
                parent[name] = parent[name]  # reading an interpolation resolves it
        except Exception:  # whatever went wrong, the full pass gives the usual result or error
            _resolve(cfg)
        yield cfg


def _interpolations(cfg: DictConfig) -> list[tuple[tuple, object]]:
    """(path to the parent, key) of every interpolation node outside ``hydra``, not descending into them."""
    out = []

    def walk(node, path):
        keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        for k in keys:
            if not path and k == "hydra":
                continue
            if OmegaConf.is_interpolation(node, k):
                out.append((path, k))
            elif not OmegaConf.is_missing(node, k):
                child = node[k]
                if isinstance(child, (DictConfig, ListConfig)):
                    walk(child, (*path, k))

    walk(cfg, ())
    return out


def grid(overrides: Sequence[str]) -> list[list[str]]:
    """The cells of a multirun: the sweep config's ``hydra.sweeper.params`` (``+sweep=<name>``), then
    the command line's sweeps and values, expanded the way Hydra's basic sweeper does."""
    params = compose(fixed_overrides(overrides), with_hydra=True, resolve=False).hydra.sweeper.get("params") or {}
    return expand([*(f"{k}={v}" for k, v in params.items()), *overrides])


def missing_keys(cfg: DictConfig) -> set[str]:
    """``OmegaConf.missing_keys`` (the same keys, in its dotted form), reading nodes without resolving
    every value: ~5x faster, which counts when a sweep validates thousands of cells."""
    out: set[str] = set()

    def gather(node, prefix: str) -> None:
        listed = isinstance(node, ListConfig)
        for key in range(len(node)) if listed else node.keys():
            name = f"{prefix}[{key}]" if listed else f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_missing(node, key):
                out.add(name)
            elif not OmegaConf.is_interpolation(node, key):  # an interpolation's target is walked where it is
                child = node[key]
                if isinstance(child, (DictConfig, ListConfig)):
                    gather(child, name)

    gather(cfg, "")
    return out


def validate(cfg: DictConfig, tree: dict | None = None, memo: set | None = None) -> None:
    """Check a composed run config before anything is built or written: every key against the schema
    (:mod:`mixer_scaling.schema`: declared, typed, in range), then the rules that need a model spec or
    timm (:func:`_check_domain`). Reads no data.

    For the cells of a grid: ``tree`` is the config resolved to plain data, if at hand, and ``memo`` a set
    kept from cell to cell, so a sweep over seeds checks its model, data and recipe once, not 1000 times.
    """
    from . import schema

    if tree is None:
        missing = sorted(missing_keys(cfg))
        if missing:
            raise ConfigError(f"{missing[0]} is required and has no value; set it on the command line ({missing[0]}=...)")
        tree = OmegaConf.to_container(cfg, resolve=True)
    check_no_secrets(tree)
    if memo is None:
        schema.check(tree)
        check_runs_dir(tree.get("runs_dir"))
        return _check_domain(cfg)
    schema.check_value("seed", tree.get("seed"))
    key = json.dumps({k: v for k, v in tree.items() if k not in ("seed", "hydra")}, sort_keys=True, default=str)
    if key not in memo:
        schema.check(tree)
        check_runs_dir(tree.get("runs_dir"))
        _check_domain(cfg)
        memo.add(key)


def check_runs_dir(runs_dir) -> None:
    """``runs_dir`` names a folder path every folder name of which the file system can hold (checked on the
    string, :func:`mixer_scaling.paths.check_names`); whether it is writable is checked when a run starts
    (:func:`mixer_scaling.paths.check_folder`)."""
    from .paths import check_names

    if runs_dir is None or not str(runs_dir).strip():
        raise ConfigError(f"runs_dir={runs_dir!r} is not allowed; expected a folder path (default: runs)")
    check_names(runs_dir, "runs_dir")


def _check_domain(cfg: DictConfig) -> None:
    """The checks the schema cannot make alone: the model against its spec (patch, family-only keys),
    timm's RandAugment parser, the data keys' combinations, the W&B mode against $WANDB_MODE."""
    from .data import validate_data_cfg
    from .models import check_model_cfg
    from .tracking import resolve_mode

    check_model_cfg(cfg.model, image_size=cfg.data.image_size)
    validate_data_cfg(cfg.data)
    if cfg.data.get("permutation") == "patch_pixel" and cfg.data.get("permutation_patch") is None:
        from .models import get_spec

        if get_spec(cfg.model.name).patch is None:
            raise ConfigError(f"data.permutation=patch_pixel with model={cfg.model.name}: the model has no patch size; "
                              f"set data.permutation_patch (an integer dividing data.image_size={cfg.data.image_size})")
    resolve_mode(cfg.wandb.mode)


def check_overrides(argv: Iterable[str]) -> int:
    """Compose and validate every cell an app's command line would run. Returns the number of cells."""
    overrides, multirun = split_argv(argv)
    if multirun:
        check_launcher(overrides)
    cells = grid(overrides) if multirun else [overrides]
    memo: set = set()
    from .paths import check_folder
    from .records import run_id_of

    for cfg in compose_many(cells):
        tree = OmegaConf.to_container(cfg, resolve=True)
        validate(cfg, tree, memo)
        run_id_of(tree)  # a data folder's fingerprint (its split folders listed): the same one-line errors
        if multirun and ("writable", str(cfg.runs_dir)) not in memo:  # Hydra writes its files under runs_dir
            check_folder(str(cfg.runs_dir), "runs_dir")
            memo.add(("writable", str(cfg.runs_dir)))
    return len(cells)


def check_launcher(overrides: Sequence[str]) -> DictConfig:
    """Compose the ``hydra`` node of a multirun (launcher keys checked against the launcher's schema).

    A resources preset fills ``hydra.launcher``, so it needs a submitit launcher to land in.
    """
    fixed = fixed_overrides(overrides)
    resources = [o.partition("=")[2] for o in fixed if o.lstrip("+").startswith("resources=")]
    launcher = [o.partition("=")[2] for o in fixed if o.startswith("hydra/launcher=")]
    if resources and resources[-1] != "null" and not (launcher and launcher[-1] in SUBMITIT_LAUNCHERS):
        raise ConfigError(f"resources={resources[-1]} sets a submitit launcher's resources; add hydra/launcher=slurm "
                          f"(or local): allowed launchers with resources: {', '.join(SUBMITIT_LAUNCHERS)}")
    hydra_cfg = compose(fixed, with_hydra=True, resolve=False).hydra
    if launcher and launcher[-1] in SUBMITIT_LAUNCHERS:
        try:
            node = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
        except Exception:  # parts resolve only inside the running app: those stay as written, the rest resolved
            node = resolve_leaves(hydra_cfg.launcher)
        check_launcher_values(node)
    return hydra_cfg


