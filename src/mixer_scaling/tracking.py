"""Weights & Biases for one run, with the local record as the source of truth.

W&B is a view, not a dependency: if the online client cannot start (no network, bad key, service
down, init timing out), the run logs offline instead, says so once (log and record) and carries on; its
``result.json`` and ``metrics.jsonl`` are complete either way. The W&B run id is the run's ``run_id``, so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")


def api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_mode(mode: str | None) -> str:
    """``auto``: $WANDB_MODE if set, else online with a configured key, else offline."""
    mode = "auto" if mode is None else str(mode)
    if mode not in MODES:
        raise ConfigError(f"wandb.mode={mode!r} is not allowed; choose one of: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        if env not in MODES[1:]:
            raise ConfigError(f"WANDB_MODE={env!r} is not allowed; choose one of: {', '.join(MODES[1:])}")
        return env
    return "online" if api_key_configured() else "offline"


class Tracker:
    """Thin wrapper around a W&B run whose methods never raise into the training loop."""

    def __init__(self, run=None, mode: str = "disabled", problem: str | None = None):
        self.run = run
        self.mode = mode
        self.problem = problem  # why W&B is not what was asked for (one line, for the record), or None
        self._warned = False

    @classmethod
    def start(cls, wcfg: Mapping, *, run_id: str, run_dir: Path, name: str, config: dict,
              tags: list[str]) -> "Tracker":
        """Start the W&B run. If online W&B cannot be reached within ``wandb.init_timeout``, log offline
        instead (``wandb sync`` uploads it later); if even that fails, carry on with the local record."""
        mode = resolve_mode(wcfg.get("mode"))
        if mode == "disabled":
            return cls(None, mode)
        quiet_without_home()
        try:
            import wandb
        except Exception as exc:
            return cls(None, f"{mode} (unavailable)", f"W&B unavailable ({_reason(exc)}); local record only")

        def init(mode: str):
            return wandb.init(
                project=wcfg.get("project"),
                entity=wcfg.get("entity"),
                group=wcfg.get("group"),
                job_type=wcfg.get("job_type"),
                tags=[str(t) for t in [*tags, *(wcfg.get("tags") or [])]],
                name=name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=config,
                mode=mode,
                settings=wandb.Settings(init_timeout=float(wcfg.get("init_timeout", 60)), silent=True,
                                        console="off"),
            )

        try:
            return cls(init(mode), mode)
        except Exception as exc:  # no network, bad key, server down or too slow
            problem = f"W&B unavailable ({_reason(exc)})"
        if mode == "online":
            try:
                wandb.teardown()  # the failed attempt still holds the run id in the W&B service
                run = init("offline")
                sync_dir = Path(run.dir).parent
                return cls(run, "offline (online unavailable)",
                           f"{problem}; logging offline to {sync_dir}, upload later with `wandb sync {sync_dir}`")
            except Exception as exc:
                problem += f"; offline too ({_reason(exc)})"
        return cls(None, f"{mode} (unavailable)", f"{problem}; continuing with the local record only")

    def _guard(self, what: str, fn, *args, **kw) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kw)
        except Exception as exc:
            if not self._warned:
                log.warning("W&B %s failed (%s); continuing with the local record only", what, exc)
                self._warned = True

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self._guard("log", lambda: self.run.log(dict(metrics), step=step))

    def summary(self, values: Mapping[str, Any]) -> None:
        self._guard("summary", lambda: self.run.summary.update(dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        self._guard("finish", lambda: self.run.finish(exit_code=exit_code))
        self.run = None

    @property
    def info(self) -> dict:
        run = self.run
        return {
            "mode": self.mode,
            "id": getattr(run, "id", None),
            "project": getattr(run, "project", None),
            "url": getattr(run, "url", None) if self.mode == "online" else None,
        }


def quiet_without_home() -> None:
    """With neither ``HOME`` nor ``XDG_CACHE_HOME`` set (some batch environments), W&B's service process finds
    no folder for its logs and prints ~20 log lines to stderr. Give it one through W&B's own
    ``WANDB_CACHE_DIR`` (only when none is set), a per-user folder in the system's temp folder."""
    if os.environ.get("HOME") or os.environ.get("XDG_CACHE_HOME") or os.environ.get("WANDB_CACHE_DIR"):
        return
    import tempfile

    os.environ["WANDB_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"wandb-cache-{os.getuid()}")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc).strip() else type(exc).__name__
