"""Results back to W&B: ``mixer-scaling figures ... --wandb [ENTITY/PROJECT]``.

One W&B run of job type ``analysis`` gets the results table (``wandb.Table``, key :data:`TABLE_KEY`), every
figure PNG (``wandb.Image``, key ``figures/<file stem>``) and ``dashboard.html`` when the render wrote one
(``wandb.Html``, key :data:`HTML_KEY`). Its group is the table's study, so it sits beside the study's runs.

Where: ``--wandb ENTITY/PROJECT``, or ``--wandb`` alone for the study's own W&B settings (``conf/wandb``:
``wandb.project``, ``wandb.entity``). The mode is the runs' (:func:`mixer_scaling.tracking.resolve_mode`:
$WANDB_MODE, else online with an API key, else offline); the run's files go to ``<figures folder>/wandb``.

Like every run (:class:`mixer_scaling.tracking.Tracker`), W&B is a view, never a dependency: if the client
cannot start online, the run is logged offline; if it cannot start at all, or logging fails, one warning
line says so and the figures stay written (they are written before anything is sent).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..columns import ANALYSIS_JOB_TYPE
from ..errors import UserError, one_line
from ..tracking import quiet_without_home, resolve_mode

log = logging.getLogger(__name__)

JOB_TYPE = ANALYSIS_JOB_TYPE
TABLE_KEY = "results"
FIGURE_PREFIX = "figures/"
HTML_KEY = "dashboard"
IMAGE_SUFFIX = ".png"
DASHBOARD_FILE = "dashboard.html"


def study_target(wcfg: Any = None) -> tuple[str | None, str]:
    """(entity, project) from the study's W&B settings (``conf/wandb``; ``wcfg`` or the composed default)."""
    if wcfg is None:
        from ..config import compose

        wcfg = compose().wandb
    project = wcfg.get("project")
    if not project:
        raise UserError("figures --wandb: the study's wandb.project is empty; give --wandb ENTITY/PROJECT")
    return (wcfg.get("entity") or None), str(project)


def parse_target(value: str | None) -> tuple[str | None, str]:
    """``--wandb`` value → (entity, project): ``ENTITY/PROJECT`` or a bare ``PROJECT`` (W&B's default entity);
    None or empty → the study's settings (:func:`study_target`). :class:`UserError` for anything else, and for
    a $WANDB_MODE that is not a mode (checked here, before any work, not after the figures)."""
    resolve_mode(None)
    if not value:
        return study_target()
    parts = str(value).split("/")
    if len(parts) > 2 or not all(p.strip() and p == p.strip() and " " not in p for p in parts):
        raise UserError(f"figures --wandb {value!r}: not ENTITY/PROJECT; allowed: a W&B entity and project joined by "
                        f"one '/' (or a project alone), or --wandb alone for the study's W&B settings")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def study_of(df: pd.DataFrame) -> str | None:
    """The table's study (its W&B group): the one ``study`` value; None when it has none or several."""
    studies = sorted({str(s) for s in df.get("study", pd.Series(dtype=object)).dropna()})
    return studies[0] if len(studies) == 1 else None


def _cell(value: Any) -> Any:
    """A table cell W&B's Table takes: plain Python, None for NA/NaN (pandas NA is not JSON)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return value


def table_rows(df: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    """The results table as W&B Table columns and rows (missing values None)."""
    columns = [str(c) for c in df.columns]
    rows = [[_cell(v) for v in row] for row in df.astype(object).itertuples(index=False, name=None)]
    return columns, rows


def log_results(df: pd.DataFrame, files: Iterable[str | os.PathLike], *, entity: str | None, project: str,
                out_dir: str | os.PathLike, source: str | None = None, mode: str | None = None,
                init_timeout: float = 60.0) -> dict | None:
    """Log ``df`` and the rendered ``files`` to one W&B run (job type :data:`JOB_TYPE`, group the table's
    study). Returns ``{"id", "mode", "dir", "group", "images"}``, or None when W&B could not take them (one
    warning line, never an exception: the figures are already written). ``mode`` as ``wandb.mode``."""
    files = [Path(f) for f in files]
    images = [f for f in files if f.suffix.lower() == IMAGE_SUFFIX and f.is_file()]
    html = next((f for f in files if f.name == DASHBOARD_FILE and f.is_file()), None)
    mode = resolve_mode(mode)
    if mode == "disabled":
        log.warning("W&B is disabled (wandb.mode / $WANDB_MODE); the results were not logged to W&B")
        return None
    group = study_of(df)
    quiet_without_home()
    try:
        import wandb
    except Exception as exc:
        log.warning("W&B unavailable (%s); the figures are written, the results were not logged", one_line(exc))
        return None
    run_dir = Path(out_dir)

    def init(mode: str):
        return wandb.init(project=project, entity=entity, group=group, job_type=JOB_TYPE,
                          name=f"{JOB_TYPE}-{group}" if group else JOB_TYPE, dir=str(run_dir), mode=mode,
                          config={"source": str(source) if source is not None else None, "rows": len(df),
                                  "figures": [f.name for f in images]},
                          reinit="create_new",  # a notebook's own active run is left alone
                          settings=wandb.Settings(init_timeout=float(init_timeout), silent=True, console="off"))

    try:
        try:
            run = init(mode)
        except Exception as exc:
            if mode != "online":
                raise
            # same fallback as tracking.Tracker: online unreachable → offline files, `wandb sync` later
            log.warning("W&B online unavailable (%s); logging the results offline", one_line(exc))
            wandb.teardown()
            mode = "offline"
            run = init(mode)
    except Exception as exc:
        log.warning("W&B unavailable (%s); the figures are written, the results were not logged", one_line(exc))
        return None
    try:
        columns, rows = table_rows(df)
        payload: dict[str, Any] = {TABLE_KEY: wandb.Table(columns=columns, data=rows)}
        for f in images:
            payload[f"{FIGURE_PREFIX}{f.stem}"] = wandb.Image(str(f))
        if html is not None:
            payload[HTML_KEY] = wandb.Html(html.read_text(encoding="utf-8"), inject=False)
        run.log(payload)
        info = {"id": run.id, "mode": mode, "dir": str(Path(run.dir).parent), "group": group, "images": len(images),
                "url": getattr(run, "url", None) if mode == "online" else None}
        run.finish()
    except Exception as exc:
        log.warning("W&B logging of the results failed (%s); the figures are written", one_line(exc))
        try:
            run.finish(exit_code=1)
        except Exception:
            pass
        return None
    return info


def describe(info: dict | None, entity: str | None, project: str) -> str:
    """One line on where the results went (for the command's output)."""
    if info is None:
        return "W&B: results not logged (see the warning above)"
    where = f"{entity + '/' if entity else ''}{project}"
    done = (f"uploaded: {info['url']}" if info.get("url") else
            f"offline in {info['dir']}; upload with `wandb sync {info['dir']}`")
    return (f"W&B: results table and {info['images']} figures logged to run {info['id']} of {where} "
            f"(job type {JOB_TYPE}, group {info['group'] or 'none'}), {done}")


__all__ = ["HTML_KEY", "JOB_TYPE", "TABLE_KEY", "FIGURE_PREFIX", "describe", "log_results", "parse_target",
           "study_of", "study_target", "table_rows"]
