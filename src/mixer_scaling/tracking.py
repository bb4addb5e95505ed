"""Weights & Biases for one run, with the local record as the source of truth.

W&B is a view, not a dependency: if the online client cannot start (no network, bad key, service
down, init timing out), the run logs offline instead, says so once (log and record) and carries on; its
``result.json`` and ``metrics.jsonl`` are complete either way. The W&B run id is the run's ``run_id``, so a resumed run continues the same W&B run.

Inside a SLURM job, ``scancel`` and preemption signal every process of the job, W&B's service process
(``wandb-core``) too, and that one exits at once on SIGTERM without finishing its run (wandb/wandb#9963):
its offline folder is cut off (no end; empty if nothing was flushed yet, which ``wandb sync`` cannot read)
and W&B's exit hook would print a traceback. :meth:`Tracker.finish` then writes the attempt again to a
new service, ends it with the exit code, and says so in one line (see there).

Runs are shaped for comparison across architectures (:mod:`.columns` names every key): the
config holds flat comparison keys (``family``, ``model_name``, ``size``, ``fraction``, ``pretrain_flops``
...) beside the nested resolved config from ``wandb.init`` on, curves are drawn against examples seen
(``flops`` is logged too, as the other x-axis), and the summary keeps the best selection accuracy and
the last loss.
"""

from __future__ import annotations

import logging
import netrc
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
# Size of W&B's transaction log (``run-<id>.wandb``) that holds nothing but its header (":W&B", magic, version).
EMPTY_LOG_BYTES = 7


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

    def __init__(self, run=None, mode: str = "disabled", problem: str | None = None, restart=None):
        self.run = run
        self.mode = mode
        self.problem = problem  # why W&B is not what was asked for (one line, for the record), or None
        self._warned = False
        self._restart = restart  # () -> the same W&B run, started again (on a new service if the last one died)
        self._logged: list[tuple[dict, int]] = []  # what this attempt logged, for finish() to write again
        self._summary: dict = {}

    @classmethod
    def start(cls, wcfg: Mapping, *, run_id: str, run_dir: Path, name: str, config: dict,
              tags: list[str], compare: Mapping[str, Any] | None = None) -> "Tracker":
        """Start the W&B run. If online W&B cannot be reached within ``wandb.init_timeout``, log offline
        instead (``wandb sync`` uploads it later); if even that fails, carry on with the local record.

        ``config`` (the nested resolved config) and ``compare`` (flat comparison keys,
        :func:`.columns.compare_config`) go to ``wandb.init`` as one config, so both are there
        from the run's first record; a key in both keeps ``config``'s value (it is the run's config).
        The run's metrics are declared (:func:`.columns.define_metrics`) before anything is logged."""
        from .columns import define_metrics

        init_config = {**(compare or {}), **config}
        mode = resolve_mode(wcfg.get("mode"))
        if mode == "disabled":
            return cls(None, mode)
        quiet_without_home()
        try:
            import wandb
        except Exception as exc:
            return cls(None, f"{mode} (unavailable)", f"W&B unavailable ({_reason(exc)}); local record only")

        def init(mode: str):
            run = wandb.init(
                project=wcfg.get("project"),
                entity=wcfg.get("entity"),
                group=wcfg.get("group"),
                job_type=wcfg.get("job_type"),
                tags=[str(t) for t in [*tags, *(wcfg.get("tags") or [])]],
                name=name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                config=init_config,
                mode=mode,
                settings=wandb.Settings(init_timeout=float(wcfg.get("init_timeout", 60)), silent=True,
                                        console="off"),
            )
            try:  # again on every (re)start: a new service knows nothing of the last one's
                define_metrics(run)
            except Exception as exc:  # a client without these options: the run logs all the same
                log.warning("W&B define_metric failed (%s); curves keep W&B's default x-axis", _reason(exc))
            return run

        try:
            return cls(init(mode), mode, restart=lambda: init(mode))
        except Exception as exc:  # no network, bad key, server down or too slow
            problem = f"W&B unavailable ({_reason(exc)})"
        if mode == "online":
            try:
                wandb.teardown()  # the failed attempt still holds the run id in the W&B service
                run = init("offline")
                sync_dir = Path(run.dir).parent
                return cls(run, "offline (online unavailable)",
                           f"{problem}; logging offline to {sync_dir}, upload later with `wandb sync {sync_dir}`",
                           restart=lambda: init("offline"))
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
                log.warning("W&B %s failed (%s); the local record goes on, and W&B is written again when the run "
                            "ends", what, exc)
                self._warned = True

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run is not None:
            self._logged.append((dict(metrics), step))
        self._guard("log", lambda: self.run.log(dict(metrics), step=step))

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self._summary.update(values)
        self._guard("summary", lambda: self.run.summary.update(dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        """End the W&B run with ``exit_code``, its files complete for ``wandb sync``.

        If W&B's service process has died (inside a SLURM job, ``scancel`` or preemption signals it along
        with the run, and it exits without finishing), the finish fails. Then :func:`wandb.teardown`
        drops that service (and W&B's exit hook, which would raise at exit with a traceback), the same W&B
        run is started again on a new service, gets what this attempt logged (online: what the server
        lacks) and is finished with ``exit_code``; the dead service's offline folder is removed if it holds
        nothing (``wandb sync`` cannot read an empty transaction log). One line says so."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            run.finish(exit_code=exit_code)
            return
        except Exception as exc:  # the service is gone (signalled with the job) or did not answer
            reason = _reason(exc)
        import wandb

        cut_off = _sync_file(run)
        try:
            try:
                wandb.teardown(exit_code)
            except OSError:  # it cannot tell a dead service; it has dropped it and its exit hook all the same
                pass
            again = self._restart()
            start = again.step  # online: the next step the server expects; offline: 0
            for metrics, step in self._logged:
                if step >= start:
                    again.log(metrics, step=step)
            if self._summary:
                again.summary.update(self._summary)
            again.finish(exit_code=exit_code)
        except Exception as exc:
            log.warning("W&B finish failed (%s), and again on a new service (%s); continuing with the local "
                        "record only", reason, _reason(exc))
            return
        if cut_off is not None and cut_off != _sync_file(again) and cut_off.is_file() \
                and cut_off.stat().st_size <= EMPTY_LOG_BYTES and cut_off.parent.name.startswith("offline-"):
            shutil.rmtree(cut_off.parent, ignore_errors=True)
        log.warning("W&B's service ended before the run did (%s; a SLURM job's stop signal reaches it too): "
                    "wrote this attempt again and finished it on a new one: %s", reason, _sync_file(again).parent)

    @property
    def info(self) -> dict:
        run = self.run
        return {
            "mode": self.mode,
            "id": getattr(run, "id", None),
            "project": getattr(run, "project", None),
            "url": getattr(run, "url", None) if self.mode == "online" else None,
        }


def _sync_file(run) -> Path | None:
    """The run's W&B transaction log (``<wandb dir>/<mode>-run-<time>-<id>/run-<id>.wandb``)."""
    try:
        return Path(run.settings.sync_file)
    except Exception:
        return None


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
