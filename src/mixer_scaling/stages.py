"""A sweep's second stage: every finished first-stage cell (a *parent*) fine-tuned over a grid.

A sweep declares it in its YAML, beside its first-stage grid (``hydra.sweeper.params``)::

    stages:
      finetune:
        parents: {data.fraction: 1.0}   # which first-stage cells: key -> value or list of values; {}: all
        grid:                           # the fine-tune app's overrides (conf/finetune.yaml), a product
          image_size: [224, 448]
          train.lr: [0.003, 0.01, 0.03, 0.06]
        overrides: [data=imagefolder, "data.root=${fewshot.root}"]   # the same for every child

``stages`` is read from the first cell's resolved config (it is not identity: a run id never depends on
it). Each (parent, grid point) is a *child*: the fine-tune app's config with ``parent=<parent's run id>``
and ``runs_dir`` the parent's. Its run id is computed here, from the parent's config alone
(:func:`mixer_scaling.finetune.child_config`), before the parent has run, and is the run id the fine-tune
gets when it runs — so a relaunch finds it. Every child is composed and validated when the sweep is
loaded: a bad stage is one line before anything is submitted.

Where a child stands (:func:`child_states`): its own record and queue entry first (as a first-stage
cell's), else its parent's state: ``waiting`` while the parent has not finished, ``blocked`` when it
failed (or its record is damaged). On SLURM a waiting child is submitted at once with an ``afterok``
dependency on its parent's job (:func:`mixer_scaling.launch.submit`); locally the children run after the
first stage.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from .errors import ConfigError, one_line
from .sweep import (DAMAGED, DONE, FAILED, NEW, PENDING, RUNNING, TO_SUBMIT, Cell, CellState, Sweep, cell_states)

STAGES_KEY = "stages"
KINDS = ("finetune",)
STAGE_KEYS = ("parents", "grid", "overrides")
WAITING, BLOCKED = "waiting", "blocked"
# Keys of a launch's command line the children take too (where runs are logged and run, not what they compute).
PASSED_ON = ("wandb.", "device", "progress", "wait_for_lock")


@dataclass
class Child(Cell):
    """A second-stage cell: ``cfg``/``resolved`` are the fine-tune's resolved run config, ``app`` the fine-tune
    app's config the job receives (``parent`` by run id)."""

    stage: str = "finetune"
    parent: Cell | None = field(default=None, repr=False)
    app: dict = field(default_factory=dict, repr=False)
    gflops: float | None = None  # forward GFLOPs per image of the fine-tuned model (Mixer at K > 1 is wider)

    @property
    def config(self) -> dict:
        app = copy.deepcopy(self.app)
        for key in ("accum_steps", "grad_checkpointing"):  # the memory plan (launch), if one was applied
            app["train"][key] = self.resolved["train"][key]
        return app

    @property
    def label(self) -> str:
        return f"{self.parent.run_id} " + (" ".join(f"{k}={v}" for k, v in self.axes.items()) or self.run_id)


@dataclass
class Stage:
    name: str
    spec: dict
    children: list[Child]

    def sweep(self, first: Sweep) -> Sweep:
        """The children as a sweep of their own (same name, so the same manifest and log folder)."""
        return Sweep(first.name, list(self.children), first.launcher_overrides)


def spec_of(sweep: Sweep) -> dict | None:
    """The sweep's ``stages`` block as plain data, checked (None when it has none)."""
    raw = sweep.cells[0].value(STAGES_KEY) if sweep.cells else None
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{STAGES_KEY}={raw!r} is not allowed; expected a mapping with one stage: "
                          f"{', '.join(KINDS)}")
    unknown = [k for k in raw if k not in KINDS]
    if unknown:
        raise ConfigError(f"{STAGES_KEY}.{unknown[0]} is not a stage; choose one of: {', '.join(KINDS)}")
    spec = raw["finetune"]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{STAGES_KEY}.finetune={spec!r} is not allowed; expected a mapping with keys "
                          f"{', '.join(STAGE_KEYS)}")
    bad = [k for k in spec if k not in STAGE_KEYS]
    if bad:
        raise ConfigError(f"{STAGES_KEY}.finetune.{bad[0]} is not a key of a stage; keys: {', '.join(STAGE_KEYS)}")
    parents = spec.get("parents") or {}
    if not isinstance(parents, Mapping):
        raise ConfigError(f"{STAGES_KEY}.finetune.parents={parents!r} is not allowed; expected a mapping of "
                          "first-stage keys to a value or a list of values ({}: every cell)")
    grid = spec.get("grid")
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError(f"{STAGES_KEY}.finetune.grid={_shown(grid)} is not allowed; expected a non-empty mapping of "
                          "fine-tune keys to non-empty lists, e.g. {train.lr: [0.003, 0.01]}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{STAGES_KEY}.finetune.grid.{key}={_shown(values)} is not allowed; expected a non-empty "
                              "list of values")
    overrides = spec.get("overrides") or []
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{STAGES_KEY}.finetune.overrides={overrides!r} is not allowed; expected a list of "
                          "key=value overrides of the fine-tune app")
    return {"parents": dict(parents), "grid": {k: list(v) for k, v in grid.items()}, "overrides": list(overrides)}


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)


def _override(key: str, value: Any) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, (list, tuple)):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    return f"{key}={value}"


def _matches(cell: Cell, parents: Mapping[str, Any]) -> bool:
    for key, wanted in parents.items():
        options = wanted if isinstance(wanted, (list, tuple)) else [wanted]
        if cell.value(key) not in options:
            return False
    return True


def expand(sweep: Sweep, run_overrides: Sequence[str] = ()) -> Stage | None:
    """The sweep's second stage: its children composed, validated and keyed by run id (ConfigError on a
    bad stage: a filter on a key the first stage does not have, an empty grid, a child the fine-tune app
    refuses, e.g. a Mixer resolution that is not a multiple of its parent's)."""
    from types import SimpleNamespace

    from .finetune import child_config, compose_finetune, finetune_flops
    from .records import run_id_of

    spec = spec_of(sweep)
    if spec is None:
        return None
    for key in spec["parents"]:
        if sweep.cells[0].value(key) is None:
            raise ConfigError(f"{STAGES_KEY}.finetune.parents.{key} is not a key of the first stage's cells; "
                              f"expected a config key they have, e.g. data.fraction or model.name")
    passed = [o for o in run_overrides if o.lstrip("+~").partition("=")[0].startswith(PASSED_ON)]
    points = [dict(zip(spec["grid"], values)) for values in itertools.product(*spec["grid"].values())]
    varying = [k for k, v in spec["grid"].items() if len(v) > 1]
    children, seen = [], set()
    for parent in sweep.cells:
        if not _matches(parent, spec["parents"]):
            continue
        parent_cfg = OmegaConf.create(parent.resolved if parent.resolved is not None else parent.config)
        for point in points:
            overrides = [f"parent={parent.run_id}", f"runs_dir={parent.value('runs_dir')}", *passed,
                         *spec["overrides"], *(_override(k, v) for k, v in point.items())]
            where = f"{STAGES_KEY}.finetune, parent {parent.label} ({parent.run_id}), " \
                    + " ".join(_override(k, v) for k, v in point.items())
            try:
                app = compose_finetune(overrides)
                final, factor = child_config(app, parent.run_id, parent_cfg, int(parent.value("data.image_size")))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            except Exception as exc:  # a model the registry refuses, and the like: still one line
                raise ConfigError(f"{where}: {one_line(exc)}") from None
            resolved = OmegaConf.to_container(final, resolve=True)
            run_id = run_id_of(resolved)
            classes = resolved["data"].get("num_classes")  # an image folder's count is only known from disk
            gflops = finetune_flops(SimpleNamespace(cfg=final, factor=factor),
                                    classes if isinstance(classes, int) else 1000) / 1e9
            if run_id in seen:
                continue
            seen.add(run_id)
            axes = {k: point[k] for k in varying}
            children.append(Child(overrides, final, run_id, axes, resolved, stage="finetune", parent=parent,
                                  app=OmegaConf.to_container(app, resolve=False), gflops=gflops))
    return Stage("finetune", spec, children)


def child_states(stage_sweep: Sweep, parents: list[CellState], queue: dict[str, str] | None = None,
                 ask_queue: bool = True) -> list[CellState]:
    """Each child's state: its own record, lock and queue entry, as any cell's (:func:`~.sweep.cell_states`),
    then, for a child that has not run, its parent's: ``waiting`` (parent not done yet), ``blocked``
    (parent failed or damaged)."""
    by_id = {s.cell.run_id: s for s in parents}
    out = []
    for s in cell_states(stage_sweep, queue=queue, ask_queue=ask_queue):
        parent = by_id[s.cell.parent.run_id]
        if s.record is None and s.state not in (PENDING, RUNNING) and parent.state != DONE:
            if parent.state in (FAILED, DAMAGED):
                s.state, s.detail = BLOCKED, f"parent {parent.cell.run_id} {parent.state}" + (
                    f": {parent.detail}" if parent.detail else "")
            else:
                s.state, s.detail = WAITING, f"parent {parent.cell.run_id} {parent.state}"
        out.append(s)
    return out


def to_submit(children: list[CellState], parents: list[CellState], executor: str,
              submitted: Mapping[str, str]) -> tuple[list[Cell], dict[str, str]]:
    """(children to submit now, run id → the parent's SLURM job to wait for). ``submitted``: parents' run
    ids → job ids of this launch. Local executors run children of finished parents only (after the first
    stage); SLURM also takes a child whose parent is submitted now (a failed parent's blocked children too)
    or queued, with a dependency on its job. A child whose parent runs outside the queue waits for a relaunch."""
    by_id = {s.cell.run_id: s for s in parents}
    todo, after = [], {}
    for s in children:
        if s.state not in (*TO_SUBMIT, WAITING, BLOCKED) and not (executor != "slurm" and s.state == RUNNING
                                                                  and not s.detail):
            continue
        parent = by_id[s.cell.parent.run_id]
        if parent.state == DONE or parent.state == "to score":
            todo.append(s.cell)
        elif executor == "slurm":
            job = submitted.get(parent.cell.run_id) or (parent.job_id if parent.state in (PENDING, RUNNING)
                                                        and parent.job_id and not str(parent.detail).startswith(
                                                            "held by") else None)
            if job:
                todo.append(s.cell)
                after[s.cell.run_id] = str(job)
    return todo, after


def counts(states: list[CellState]) -> str:
    tally: dict[str, int] = {}
    for s in states:
        tally[s.state] = tally.get(s.state, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(tally.items(), key=lambda kv: -kv[1]))


__all__ = ["BLOCKED", "Child", "NEW", "Stage", "WAITING", "child_states", "counts", "expand", "spec_of", "to_submit"]
