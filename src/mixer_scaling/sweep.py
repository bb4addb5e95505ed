"""A sweep: the grid of run configs a ``conf/sweep/<name>.yaml`` enumerates, and where each cell stands.

A sweep config is an ordinary Hydra config (``+sweep=<name>``) whose ``hydra.sweeper.params`` lists
the axes; :func:`load` expands it exactly as Hydra's multirun would (plus any command-line axes),
composes and validates every cell before anything is dispatched, and keys each cell by its run id —
so the state of a cell is simply what its run directory says, whoever ran it (``sweep launch``,
Hydra's multirun or a plain ``train``).

Launches are remembered in ``<runs_dir>/.sweeps/<name>.jsonl`` (one line per submitted cell: run id,
job id, executor), which is how ``sweep status`` and a relaunch tell a queued cell from a lost one. A cell
whose run directory's lock a live process holds (:mod:`.locks`) is running, whoever started it: a
relaunch never starts it again.
"""

from __future__ import annotations

import copy
import getpass
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from .config import compose_many, grid, group_options, validate
from .errors import ConfigError, CorruptFile
from .locks import describe, run_holder
from .records import DONE, FAILED, INTERRUPTED, RUNNING, MetricsLog, read_record, run_id_of
from .score import describe_missing, missing

SWEEP_GROUP = "sweep"
MANIFEST_DIR = ".sweeps"

# Cell states, from the run directory and (where there is one) the SLURM queue. `damaged`: its result.json
# is unreadable, not JSON, or has a field of the wrong type (`"metrics": [...]`); the rerun sets it aside.
NEW, PENDING, STALE, LOST, UNKNOWN, DAMAGED = "new", "pending", "stale", "lost", "unknown", "damaged"
TO_SCORE = "to score"  # done, but not on all the evaluation settings the sweep asks for: scored, not retrained
# What a (re)launch submits again: everything but finished cells and cells still in the queue.
TO_SUBMIT = (NEW, INTERRUPTED, STALE, LOST, FAILED, DAMAGED, TO_SCORE)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(run overrides, launcher overrides): ``hydra/launcher=``, ``hydra.launcher.*``, ``resources=`` and
    ``resources.*`` (e.g. a preset's ``resources.gpu_memory_gb``) choose how cells are dispatched, never what
    they compute; ``cluster=``/``cluster.*`` (the user's cluster) go to both."""
    run, launcher = [], []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if key.startswith("hydra"):
            if not (key == "hydra/launcher" or key.startswith("hydra.launcher.")):
                raise ConfigError(f"{o!r}: sweep launch takes hydra/launcher and hydra.launcher.* overrides only; "
                                  "other hydra.* keys belong to Hydra's own multirun (python -m mixer_scaling.train -m)")
            launcher.append(o)
        elif key == "resources" or key.startswith("resources."):
            launcher.append(o)
        elif key == "cluster" or key.startswith("cluster."):
            run.append(o)       # the cells record the cluster they run on (not identity)
            launcher.append(o)  # its partition, account, setup and GPU memory fill every preset
        else:
            run.append(o)
    return run, launcher


@dataclass
class Cell:
    """One run of a sweep: its overrides, its composed (validated) config and its identity."""

    overrides: list[str]
    cfg: DictConfig
    run_id: str
    axes: dict = field(default_factory=dict)  # the swept keys → this cell's value
    resolved: dict | None = field(default=None, repr=False, compare=False)  # cfg as plain data, if known

    def value(self, key: str):
        """A resolved config value by dotted key (``"train.batch_size"``; None if absent), read from the
        plain copy when the sweep kept one: ~20x faster than going through the DictConfig."""
        if self.resolved is None:
            return OmegaConf.select(self.cfg, key)
        node = self.resolved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @property
    def run_dir(self) -> Path:
        return Path(self.value("runs_dir")) / self.run_id

    @property
    def config(self) -> dict:
        """The resolved config as plain data: what a job receives (fixed at launch, whatever conf/ becomes)."""
        if self.resolved is not None:
            return copy.deepcopy(self.resolved)
        return OmegaConf.to_container(self.cfg, resolve=True)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.axes.items()) or self.run_id

    def record(self) -> dict | None:
        """The cell's record; None when there is none or it is damaged (:meth:`read` says how)."""
        return self.read()[0]

    def read(self) -> tuple[dict | None, str]:
        """(record, '') — or (None, what is wrong) for a damaged record: unreadable, not JSON, not an object
        or with ``metrics``/``config``/``error`` of the wrong type (:class:`~.errors.CorruptFile`, see
        :func:`~.records.read_record`). (None, '') when there is no record yet."""
        try:
            record = read_record(self.run_dir)
        except CorruptFile as exc:  # the rerun sets it aside and resumes
            return None, exc.problem
        except (OSError, ValueError) as exc:
            return None, f"unreadable ({exc})"
        return record, ""


@dataclass
class Sweep:
    name: str
    cells: list[Cell]
    launcher_overrides: list[str]
    stage: object = None  # the second stage (:class:`~.stages.Stage`) when the sweep declares ``stages``

    @property
    def runs_dirs(self) -> list[Path]:
        return sorted({Path(c.value("runs_dir")) for c in self.cells})

    def manifest_path(self, runs_dir: Path) -> Path:
        return Path(runs_dir) / MANIFEST_DIR / f"{self.name}.jsonl"

    def submissions(self) -> dict[str, dict]:
        """run_id → its latest submission (job id, executor, time) from the launch manifests of *every*
        sweep in the runs directories: sweeps share cells (same config, same run id), and a cell queued
        by one must not be submitted again by another."""
        latest: dict[str, dict] = {}
        wanted = {c.run_id for c in self.cells}
        for runs_dir in self.runs_dirs:
            for path in sorted((Path(runs_dir) / MANIFEST_DIR).glob("*.jsonl")):
                for line in path.read_text().splitlines():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        continue
                    run_id = entry.get("run_id")
                    if run_id in wanted and entry.get("submitted_at", "") >= latest.get(run_id, {}).get("submitted_at", ""):
                        latest[run_id] = entry
        return latest

    def remember(self, cells: Iterable[Cell], job_ids: Iterable[str], executor: str, log_folder: Path) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        by_dir: dict[Path, list[str]] = {}
        for cell, job_id in zip(cells, job_ids):
            entry = {"run_id": cell.run_id, "job_id": str(job_id), "executor": executor, "submitted_at": now,
                     "label": cell.label, "log_folder": str(log_folder)}
            by_dir.setdefault(Path(cell.value("runs_dir")), []).append(json.dumps(entry, sort_keys=True))
        for runs_dir, lines in by_dir.items():
            path = self.manifest_path(runs_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:  # one short line per cell: appends are atomic enough
                f.write("".join(line + "\n" for line in lines))
                f.flush()


def known_sweeps() -> list[str]:
    return group_options(SWEEP_GROUP)


def load(name: str, overrides: Sequence[str] = (), progress: bool = True) -> Sweep:
    """Expand, compose and validate every cell of sweep ``name`` (ConfigError on any bad cell), and of its
    second stage when it declares one (:mod:`.stages`)."""
    if name not in known_sweeps():
        raise ConfigError(f"sweep {name!r} is not a known sweep; choose one of: {', '.join(known_sweeps())} "
                          f"(conf/sweep/<name>.yaml)")
    run_overrides, launcher_overrides = split_overrides(overrides)
    base = [f"+{SWEEP_GROUP}={name}"]
    cells_overrides = grid([*base, *run_overrides])
    swept = _swept_keys(cells_overrides)
    cells, seen, validated = [], {}, set()
    configs = compose_many(cells_overrides)  # the defaults composed once per distinct group choice
    for ov in _progress(cells_overrides, f"composing {len(cells_overrides)} cells of {name}", progress):
        cfg = next(configs)
        resolved = OmegaConf.to_container(cfg, resolve=True)  # once: for the checks, the run id and the job
        try:
            validate(cfg, resolved, validated)
        except ConfigError as exc:
            raise ConfigError(f"cell {' '.join(o for o in ov if o not in base)}: {exc}") from None
        run_id = run_id_of(resolved)
        axes = {k: v for k, v in (o.split("=", 1) for o in ov) if k in swept}
        if run_id in seen:  # e.g. an axis that does not change what is computed (progress=true,false)
            continue
        seen[run_id] = True
        cells.append(Cell(list(ov), cfg, run_id, axes, resolved))
    sweep = Sweep(name, cells, launcher_overrides)
    from .stages import expand  # here: stages builds on this module

    sweep.stage = expand(sweep, run_overrides)
    return sweep


def _swept_keys(cells: list[list[str]]) -> list[str]:
    """Keys whose value differs between cells, in grid order (the columns of a status table)."""
    values: dict[str, set] = {}
    for ov in cells:
        for o in ov:
            k, _, v = o.partition("=")
            values.setdefault(k, set()).add(v)
    return [k for k, vs in values.items() if len(vs) > 1]


def _progress(items: list, description: str, enabled: bool):
    if not enabled or len(items) < 20:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


# ---------------------------------------------------------------------------------------------
# Where cells stand
# ---------------------------------------------------------------------------------------------


def squeue_states() -> dict[str, str] | None:
    """SLURM state (PENDING, RUNNING, ...) of this user's queued jobs, array tasks as ``123_4``; None
    when there is no ``squeue`` to ask. Finished jobs are not in the result."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        states[job] = state
    return states


@dataclass
class CellState:
    cell: Cell
    state: str
    detail: str = ""
    job_id: str | None = None
    step: int | None = None
    steps: int | None = None
    record: dict | None = None


def cell_states(sweep: Sweep, queue: dict[str, str] | None = None, ask_queue: bool = True) -> list[CellState]:
    """Each cell's state: its record first (done and failed are final), then the queue."""
    submissions = sweep.submissions()
    if queue is None and ask_queue and any(s.get("executor") == "slurm" for s in submissions.values()):
        queue = squeue_states()
    out = []
    for cell in sweep.cells:
        record, damage = cell.read()
        sub = submissions.get(cell.run_id)
        job_id = sub["job_id"] if sub else None
        on_slurm = bool(sub) and sub.get("executor") == "slurm"  # only SLURM job ids are in squeue
        queued = queue.get(job_id) if (queue is not None and on_slurm) else None
        status = record.get("status") if record else None
        steps = record.get("steps") if record else None
        step = _last_step(cell.run_dir) if record else None
        if status == DONE:
            todo = missing(record, cell.resolved if cell.resolved is not None else cell.config)
            state, detail = (TO_SCORE, describe_missing(todo)) if todo else (DONE, "")
        elif on_slurm and queue is None and status not in (FAILED,):
            state, detail = UNKNOWN, f"job {job_id}: the SLURM queue could not be read"
        elif queued in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "SUSPENDED"):
            state, detail = PENDING, queued.lower()
        elif queued:
            state, detail = RUNNING, queued.lower()
        elif (holder := run_holder(cell.run_dir)) is not None:  # a live process is its writer, whoever started it
            state, detail = RUNNING, f"held by {describe(holder)}"
        elif damage:  # counted as damaged, never read further; a relaunch sets the record aside and reruns
            state, detail = DAMAGED, f"result.json {damage}"
        elif status == FAILED:
            err = record.get("error") or {}
            state, detail = FAILED, f"{err.get('type', 'Error')}: {err.get('message', '')}".strip()
        elif status == INTERRUPTED:
            state, detail = INTERRUPTED, f"checkpoint at step {record.get('interrupted_at_step', '?')}"
        elif status == RUNNING:
            # A running record whose job left the queue was killed without a word (OOM, node failure).
            if queue is not None and sub and sub.get("executor") == "slurm":
                state, detail = STALE, f"job {job_id} left the queue while running; relaunch resumes it"
            else:
                state, detail = RUNNING, ""
        elif sub and queue is not None and sub.get("executor") == "slurm":
            state, detail = LOST, f"job {job_id} ended without a record; see {sub.get('log_folder', '')}"
        else:
            state, detail = NEW, ""
        out.append(CellState(cell, state, detail, job_id, step, steps, record))
    return out


def _last_step(run_dir: Path) -> int | None:
    rows = MetricsLog(run_dir).read() if (run_dir / "metrics.jsonl").exists() else []
    steps = [r["step"] for r in rows if "step" in r]
    return max(steps) if steps else None


def status_rows(states: list[CellState]) -> list[dict]:
    """Plain rows of :func:`cell_states` (for ``--json`` and tests)."""
    rows = []
    for s in states:
        metrics = (s.record or {}).get("metrics") or {}
        rows.append({"run_id": s.cell.run_id, **s.cell.axes, "state": s.state, "detail": s.detail,
                     "job_id": s.job_id, "step": s.step, "steps": s.steps, "val_top1": metrics.get("val_top1"),
                     "run_dir": str(s.cell.run_dir)})
    return rows
