"""Command lines and overrides, before anything is composed: an app's argv split into overrides, Hydra's
basic sweep expansion, the group choices checked against the files, and Hydra's and OmegaConf's errors
turned into one line naming the key, the bad value and what is allowed."""

from __future__ import annotations

import itertools
import re
from typing import Iterable, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError, one_line
from .groups import GROUPS, OPTIONAL_GROUPS, group_options

VALUE_FLAGS = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir")  # Hydra flags with a value


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


def check_group_choice(override: str) -> None:
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if not sep or key not in GROUPS:
        return
    options = group_options(key)
    if key in OPTIONAL_GROUPS and value == "null":
        return
    if key == "cluster" and value == "null":  # Hydra cannot set an optional default to null, only delete it
        raise ConfigError("cluster=null is not allowed; to run without the default cluster write ~cluster")
    if re.fullmatch(r"\w+\(.*\)", value):  # glob(...), choice(...), range(...): checked once expanded
        return
    for choice in value.split(","):
        if choice not in options and key == "cluster":
            from .userconf import user_config_dir

            where = user_config_dir() / "cluster"
            known = f"choose one of: {', '.join(options)} (in {where})" if options else f"{where} holds none"
            raise ConfigError(f"cluster={choice!r} is not a known cluster config; {known}; "
                              f"write one with: mixer-scaling init --cluster {choice}")
        if choice not in options:
            raise ConfigError(f"{key}={choice!r} is not a known {key} config; choose one of: {', '.join(options)}")


#: Keys that were renamed, with what to write instead (an old command line gets one line saying so).
RENAMED = {"train.eval_every": "train.eval_every_examples (a cadence in examples seen, not steps)"}
_TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def explain(exc: Exception) -> str:
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
    for o in parse(overrides):
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


def check_line_breaks(overrides: Sequence[str]) -> None:
    """An unquoted line break in an override: Hydra's lexer would only say where it stopped reading."""
    for o in overrides:
        if ("\n" in o or "\r" in o) and "'" not in o and '"' not in o:
            raise ConfigError(f"invalid override {o!r}: it holds a line break; expected key=value on one line")


def parse(overrides: Sequence[str]):
    check_line_breaks(overrides)
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(_explain_parse_error(exc) or f"invalid override: {one_line(exc)}") from None


def fixed_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not sweeps: what every cell of a multirun shares."""
    return [o.input_line for o in parse(overrides) if not o.is_sweep_override()]
