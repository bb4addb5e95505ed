"""Hydra search path plugin: the mixer-scaling user config directory (see :mod:`mixer_scaling.userconf`).

Hydra discovers it in the ``hydra_plugins`` namespace package. It changes only the search path of
mixer-scaling's own apps (those whose configs come from ``pkg://mixer_scaling.conf``).
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PACKAGE_CONF = "pkg://mixer_scaling.conf"
PROVIDER = "mixer-scaling user config"


class MixerScalingUserConfig(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(e.path == PACKAGE_CONF for e in search_path.get_path()):
            return
        try:
            from mixer_scaling.userconf import search_dirs
        except ImportError:  # another copy of mixer_scaling first on sys.path, one without a user config
            return
        for path in search_dirs():  # after the package: a shipped config wins over a user file of its name
            search_path.append(provider=PROVIDER, path=f"file://{path}")
