"""Composing and checking configs, outside and before any Hydra app runs.

Hydra reports a bad override as a multi-line message and exit code 1, after it may already have made
output folders. Every entry point calls :func:`check_overrides` first: it composes the config the
same way (expanding ``a,b`` sweeps), runs the cheap semantic checks, and turns any problem into one
line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError, UserError, one_line

# The configs are package data (src/mixer_scaling/conf/), found through Hydra's pkg:// search path, so every
# install (editable or a wheel) composes the same configs from any working directory.
CONF_MODULE = "mixer_scaling.conf"
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the same files on disk: listing a group's options
PRIMARY = "config"
GROUPS = ("model", "data", "train", "fewshot", "wandb", "sweep", "resources")
OPTIONAL_GROUPS = ("resources",)  # may be null


def group_options(group: str) -> list[str]:
    """Options of a config group, e.g. ``model`` → ['bit/r101x1', ..., 'vit/tiny']."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


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
    _check_line_breaks(overrides)
    for o in overrides:
        _check_group_choice(o)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    except UserError:
        raise
    except Exception as exc:
        raise ConfigError(_explain(exc)) from None
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
    (``+``/``++``/``~`` keys, a sweep value, an unparsable override, a key that is not there) goes
    through :func:`compose`, which gives Hydra's result or the usual one-line error.
    """
    parser = OverridesParser.create()
    parsed: dict[str, object] = {}      # override string -> its parsed Override (or None: not cacheable)
    checked: set[str] = set()
    bases: dict[tuple[str, ...], bytes] = {}  # pickled: unpickling is ~4x faster than a deepcopy
    for cell in cells:
        overrides = [o for o in cell if not o.lstrip("+~").startswith(("hydra", "resources="))]
        for o in overrides:
            if o not in checked:
                _check_group_choice(o)
                checked.add(o)
        group, values, simple = [], [], True
        for o in overrides:
            if o not in parsed:
                try:
                    parsed[o] = parser.parse_override(o)
                except Exception:
                    parsed[o] = None
            ov = parsed[o]
            if ov is None or ov.is_sweep_override() or ov.is_add() or ov.is_force_add() or ov.is_delete() \
                    or ov.package is not None:
                simple = False
                break
            key = ov.key_or_group
            if "/" in key or ((CONF_DIR / key).is_dir() and not isinstance(ov.value(), dict)):
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


def _check_group_choice(override: str) -> None:
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if not sep or key not in GROUPS:
        return
    options = group_options(key)
    if key in OPTIONAL_GROUPS and value == "null":
        return
    if re.fullmatch(r"\w+\(.*\)", value):  # glob(...), choice(...), range(...): checked once expanded
        return
    for choice in value.split(","):
        if choice not in options:
            raise ConfigError(f"{key}={choice!r} is not a known {key} config; choose one of: {', '.join(options)}")


#: Keys that were renamed, with what to write instead (an old command line gets one line saying so).
RENAMED = {"train.eval_every": "train.eval_every_examples (a cadence in examples seen, not steps)"}
_TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _explain(exc: Exception) -> str:
    parse = _explain_parse_error(exc)
    if parse:
        return parse
    msg = str(exc)
    ambiguous = re.match(r"Ambiguous value for argument '(.*)'$", msg.splitlines()[0]) if msg else None
    if ambiguous:  # Hydra's advice spans four lines: the same in one
        key, _, value = ambiguous.group(1).partition("=")
        return (f"invalid override {ambiguous.group(1)!r}: a comma makes a sweep; for a string quote the value "
                f"(\"{key}='{value}'\"), for a list write {key}=[{value}], for a sweep add --multirun")
    # OmegaConf's own errors name the key and the value (Hydra wraps them, compose_many does not)
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, ValidationError) and cause.full_key and cause.child_node is not None:
        # a typed node (the launcher's dataclass schema) refused the value
        kind = type(cause.child_node).__name__.removesuffix("Node")
        return f"{cause.full_key}={cause.value!r} is not allowed; expected {_TYPE_NAMES.get(kind, kind.lower())}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        key = cause.full_key
        parent = key.rpartition(".")[0]
        if parent == "hydra.launcher":  # the launcher's schema: the plugin's dataclass, no new keys
            from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

            known = sorted(k for k in OmegaConf.structured(SlurmQueueConf).keys() if not k.startswith("_"))
            return f"unknown launcher key '{key}'; keys of the submitit launchers: {', '.join(known)}"
        if key in RENAMED:
            return f"config key '{key}' was renamed: use {RENAMED[key]}"
        from .schema import check

        try:
            check({key: None})
        except ConfigError as unknown:
            return str(unknown)
    return one_line(exc)


_LEXER = "LexerNoViableAltException: "


def _explain_parse_error(exc: BaseException) -> str | None:
    """One line for an override Hydra's grammar cannot read: a character it does not take unquoted (a
    non-ASCII letter, ``#``, ``&``, …) or a space inside a sweep. None for other errors."""
    from hydra.errors import OverrideParseException

    if not isinstance(exc, OverrideParseException):
        return None
    override, message = str(exc.override), str(exc.message)
    key, sep, value = override.partition("=")
    example = f"\"{key}='{value}'\"" if sep and "'" not in value else f"'{key}=\"{value}\"'"
    if message.startswith(_LEXER):
        lines = message.splitlines()
        pos = lines[1].find("^") - len(_LEXER) if len(lines) > 1 else -1
        char = f"{override[pos]!r} " if 0 <= pos < len(override) else ""
        return (f"invalid override {override!r}: the character {char}cannot be read unquoted (Hydra's override "
                f"grammar reads ASCII letters, digits and a few symbols unquoted); quote the value, e.g. {example}")
    return None


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's basic sweep expansion: ``a=1,2 b=x`` → [[a=1, b=x], [a=2, b=x]].

    As Hydra's BasicSweeper: a key given twice keeps its first position and its last value (so the
    command line replaces a sweep config's axis), and ``choice``/``range``/``glob`` sweeps expand
    (``glob`` over the options of a config group). An axis with no values is an error, not an empty grid.
    """
    axes: dict[str, list[str]] = {}
    for o in _parse(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if o.value_type == ValueType.GLOB_CHOICE_SWEEP:
                values = o.value().filter(group_options(key.lstrip("+~")))
            elif o.is_discrete_sweep():
                values = list(o.sweep_string_iterator())
            else:
                raise ConfigError(f"{key}: only comma-separated, choice, range and glob sweeps are supported, "
                                  f"got {o.input_line!r}")
            if not values:
                raise ConfigError(f"{o.input_line!r} gives no values: the grid would be empty")
            axes[key] = [f"{key}={v}" for v in values]
        else:
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(cell) for cell in itertools.product(*axes.values())]


def _check_line_breaks(overrides: Sequence[str]) -> None:
    """An unquoted line break in an override: Hydra's lexer would only say where it stopped reading."""
    for o in overrides:
        if ("\n" in o or "\r" in o) and "'" not in o and '"' not in o:
            raise ConfigError(f"invalid override {o!r}: it holds a line break; expected key=value on one line")


def _parse(overrides: Sequence[str]):
    _check_line_breaks(overrides)
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(_explain_parse_error(exc) or f"invalid override: {one_line(exc)}") from None


def fixed_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not sweeps: what every cell of a multirun shares."""
    return [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]


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


def split_argv(argv: Iterable[str]) -> tuple[list[str], bool]:
    """An app's command line → (its overrides, whether it is a multirun); Hydra's flags and their values
    (``-cn/-cp/-cd NAME``) are not overrides."""
    args, overrides, skip = list(argv), [], False
    for a in args:
        if skip:
            skip = False
        elif a in VALUE_FLAGS:
            skip = True
        elif not a.startswith("-"):
            overrides.append(a)
    return overrides, any(a in ("-m", "--multirun") for a in args)


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
            node = _resolve_leaves(hydra_cfg.launcher)
        check_launcher_values(node)
    return hydra_cfg


def _resolve_leaves(node):
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
            value = _resolve_leaves(value)
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
VALUE_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")  # Hydra flags with a value
