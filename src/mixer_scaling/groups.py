"""Where the configs live and which options each config group has: the package's ``conf/`` and the user
config directory (:mod:`mixer_scaling.userconf`), in Hydra's search order."""

from __future__ import annotations

from pathlib import Path

# The configs are package data (src/mixer_scaling/conf/), found through Hydra's pkg:// search path, so every
# install (editable or a wheel) composes the same configs from any working directory.
CONF_MODULE = "mixer_scaling.conf"
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the same files on disk: listing a group's options
GROUPS = ("model", "data", "train", "fewshot", "wandb", "sweep", "resources", "cluster")
OPTIONAL_GROUPS = ("resources",)  # may be null (the default cluster is turned off by ~cluster instead)


def config_dirs() -> list[Path]:
    """The folders configs are found in, in Hydra's order: the package's, then the user config directory
    when it exists (:mod:`mixer_scaling.userconf`)."""
    from .userconf import search_dirs

    return [CONF_DIR, *search_dirs()]


def is_group(name: str) -> bool:
    """Whether ``name`` is a config group (a folder) in the package's or the user's configs."""
    return any((root / name).is_dir() for root in config_dirs())


def group_options(group: str) -> list[str]:
    """Options of a config group, e.g. ``model`` → ['bit/r101x1', ..., 'vit/tiny'], the user's own
    (user config directory) included."""
    found = set()
    for base in config_dirs():
        root = base / group
        found.update(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))
    return sorted(found)
