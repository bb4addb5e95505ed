"""Dispatching a sweep's cells as submitit jobs: ``mixer-scaling sweep launch``.

* ``slurm``: every cell that is not done (and not already queued) is submitted as a job array —
  one array per resources preset, chunked under the cluster's ``MaxArraySize``, ``array_parallelism``
  passed to sbatch — and the command returns with the job ids. Nothing has to stay alive on the
  login node: a job's record is its run directory.
* ``local``: the same jobs as processes on this machine, a few at a time; waits for them. A cell whose
  run directory another live process holds (:mod:`.locks`) is reported as running elsewhere, not run.
  Ctrl-C reaches every process of the launch: the cells checkpoint, and submitit's job controllers write
  their own stderr to ``<runs_dir>/.sweeps/logs/<sweep>/local-controllers.log`` (:data:`CONTROLLER_LOG`),
  so the terminal shows only the command's one line (``mixer-scaling``: exit 130).
* ``debug``: in this process, one after the other (breakpoints work); waits.

A sweep's second stage (:mod:`.stages`: fine-tunes of its cells) goes through the same :func:`plan` and
:func:`submit`: on SLURM its cells are submitted in the same launch, one array per parent job, each with
``--dependency=afterok:<parent job>`` (:func:`dependency`); locally they run after the first stage. Their
job is :class:`FinetuneJob` (:func:`job_for`).

Every ``runs_dir`` is checked before anything is planned or submitted (:func:`check_runs_dirs`: writable,
no name over 255 bytes, no file on the way, no ``%`` for SLURM, which expands it in log paths).

Two launches of one sweep never submit a cell twice: each decides and submits holding
``<runs_dir>/.sweeps/<sweep>.lock`` (:func:`launch_lock`), so the second one sees the first's submissions.

Resources come from the presets in ``conf/resources/`` (the same files Hydra's launcher reads): each
cell gets the smallest preset whose model fits (:data:`PRESET_GFLOPS`) unless ``resources=<preset>``
is given. Launcher keys are hydra-submitit-launcher's (``hydra.launcher.partition=...``), checked
against its schema before anything is submitted.

On a GPU preset (``resources.gpu_memory_gb`` set) each cell to run gets a memory plan
(:func:`mixer_scaling.memory.plan_cell`): the largest micro-batch of its per-rank batch that fits the card,
without activation checkpointing if possible, applied as ``train.accum_steps`` and
``train.grad_checkpointing`` — neither is identity, so run ids do not change. Values the user set on the
command line are kept and checked. A cell that cannot fit stops the launch, in one line, before anything is
created or submitted.

Inside a job, :class:`CellJob` runs the cell (resuming from its checkpoint) and is checkpointable:
on SLURM's pre-timeout or preemption signal the run saves a checkpoint, then hands the signal to
submitit, which resubmits the same call and requeues the job.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import submitit
from submitit.core.utils import JobPaths
from omegaconf import OmegaConf, open_dict

from . import locks
from .config import check_launcher_values, compose
from .errors import ConfigError, UserError, one_line
from .locks import RunLocked
from .records import FAILED, record_failure, run_id_of
from .sweep import DONE, MANIFEST_DIR, TO_SUBMIT, UNKNOWN, Cell, CellState, Sweep, cell_states

EXECUTORS = ("slurm", "local", "debug")
# Where the local executor's job controllers write their stderr, in the sweep's log folder.
CONTROLLER_LOG = "local-controllers.log"
# What a local cell reports when another live process holds its run directory (see mixer_scaling.locks).
ELSEWHERE = "running elsewhere"
# Smallest preset whose bound (forward GFLOPs per image at the run's resolution) covers the model.
PRESET_GFLOPS = (("cpu", 0.5), ("gpu1", 10.0), ("gpu4", 40.0), ("gpu8", 150.0), ("gpu16", math.inf))
# hydra-submitit-launcher's keys shared by every executor (the rest are slurm_<key>).
BASE_KEYS = ("timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "stderr_to_stdout")
# Assumed device speed for the cost estimate: A100 bf16 dense peak; CPU cells use this machine's.
GPU_PEAK_TFLOPS = 312.0
DEFAULT_MFU = 0.4


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------


class CellJob(submitit.helpers.Checkpointable):
    """One cell inside a submitit job. ``checkpoint`` (inherited) resubmits the same call on requeue;
    the run itself resumes from its run directory."""

    def __call__(self, config: dict) -> dict:
        from .train import run

        return self._run(config, run)

    def _run(self, config: dict, run: Callable) -> dict:
        from .engine import Interrupted  # here, not at the top: the launcher itself never trains

        if not logging.getLogger().handlers:  # the run's progress lines, in the job's log file
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        cfg = OmegaConf.create(config)
        if not sys.stdout.isatty():
            cfg.progress = False  # a progress bar in a log file is noise; the metrics lines remain
        try:
            record = run(cfg)
        except RunLocked as exc:  # another live process trains this cell: not a failure, and not our record
            logging.getLogger(__name__).warning("%s", exc)
            return {"run_id": run_id_of(cfg), "status": ELSEWHERE, "holder": str(exc)}
        except Interrupted:  # checkpointed and recorded as interrupted: it resumes, it did not fail
            raise
        except Exception as exc:
            record_failure(cfg, exc)
            raise
        return {"run_id": run_id_of(cfg), "status": (record or {}).get("status")}


class FinetuneJob(CellJob):
    """A second-stage cell (:mod:`.stages`): the fine-tune app's config, whose parent is named by run id. The
    parent is found and checked when the job starts (under SLURM, after the parent's job succeeded)."""

    def __call__(self, config: dict) -> dict:
        from .finetune import build_finetune, prepare
        from .train import run

        # prepare() fails before any run directory exists (its error reaches the job's log, like sbatch's);
        # a failure after it is recorded in the fine-tune's own result.json.
        plan = prepare(OmegaConf.create(config))
        return self._run(OmegaConf.to_container(plan.cfg, resolve=True),
                         lambda cfg: run(cfg, build_fn=partial(build_finetune, plan=plan)))


def job_for(cell: Cell) -> CellJob:
    """The submitit callable that runs ``cell``: a fine-tune for a second-stage cell."""
    return FinetuneJob() if getattr(cell, "stage", None) else CellJob()


# ---------------------------------------------------------------------------------------------
# Resources and executors
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def cell_gflops(model: str, image_size: int, num_classes: int) -> float:
    from .models import forward_flops

    return forward_flops(model, image_size, num_classes=num_classes) / 1e9


def _num_classes(cell: Cell) -> int:
    n = cell.value("data.num_classes")
    return int(n) if isinstance(n, int) else 1000  # an image folder's class count is only known from disk


def _gflops(cell: Cell) -> float:
    if getattr(cell, "gflops", None):  # a fine-tune's own count (stages.Child: Mixer at K > 1 is wider)
        return cell.gflops
    return cell_gflops(cell.value("model.name"), int(cell.value("data.image_size")), _num_classes(cell))


def preset_for(cell: Cell, forced: str | None) -> str:
    if forced:
        return forced
    gflops = _gflops(cell)
    return next(name for name, bound in PRESET_GFLOPS if gflops <= bound)


def forced_preset(launcher_overrides: Sequence[str]) -> str | None:
    chosen = [o.partition("=")[2] for o in launcher_overrides if o.lstrip("+").startswith("resources=")]
    return chosen[-1] if chosen and chosen[-1] != "null" else None


def _preset_cfg(executor: str, preset: str, launcher_overrides: Sequence[str]):
    """The preset composed with the launcher of ``executor`` and the user's ``hydra.launcher.*`` and
    ``resources.*`` overrides (a fresh config: callers may change it)."""
    if any(o.startswith("hydra/launcher=") for o in launcher_overrides):
        raise ConfigError("hydra/launcher is chosen by --executor in sweep launch (slurm, local or debug)")
    keys = [o for o in launcher_overrides if not o.lstrip("+").startswith("resources=")]
    launcher = "slurm" if executor == "slurm" else "local"
    return compose([f"hydra/launcher={launcher}", f"resources={preset}", *keys], with_hydra=True, resolve=False)


def launcher_params(executor: str, preset: str, launcher_overrides: Sequence[str]) -> dict:
    """The launcher config for one preset: hydra-submitit-launcher's schema, our defaults, the preset,
    then the user's ``hydra.launcher.*`` overrides (an unknown key is a ConfigError)."""
    return preset_settings(executor, preset, launcher_overrides)[0]


def preset_settings(executor: str, preset: str, launcher_overrides: Sequence[str]) -> tuple[dict, float | None]:
    """(:func:`launcher_params`, one GPU's memory in GB: ``resources.gpu_memory_gb`` after the user's
    overrides of it, None for a CPU preset) of one preset, from one composition."""
    from .schema import check_value

    cfg = _preset_cfg(executor, preset, launcher_overrides)
    memory_gb = OmegaConf.select(cfg, "resources.gpu_memory_gb")
    check_value("resources.gpu_memory_gb", memory_gb)
    node = cfg.hydra.launcher
    with open_dict(node):
        for key in ("_target_", "submitit_folder", "name"):
            node.pop(key, None)
    try:
        params = OmegaConf.to_container(node, resolve=True)
    except Exception as exc:
        raise ConfigError(f"cannot resolve the launcher config: {one_line(exc)}") from None
    check_launcher_values(params)
    return params, None if memory_gb is None else float(memory_gb)


def make_executor(executor: str, params: dict, folder: Path, name: str) -> submitit.AutoExecutor:
    params = dict(params)
    init = {"slurm_max_num_timeout": params.pop("max_num_timeout")} if executor == "slurm" else {}
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=executor, **init)
    except RuntimeError as exc:  # e.g. no srun on this machine
        raise UserError(f"cannot use the {executor} executor here: {one_line(exc)}") from None
    update = {"name": name}
    for key, value in params.items():
        if value is None or (key == "additional_parameters" and not value):
            continue
        update[key if key in BASE_KEYS else f"{executor}_{key}"] = value
    if executor == "local":
        # One BLAS thread per requested core, so parallel cells do not fight over the machine. The job's
        # controller process (submitit's, one per cell) shares the terminal: on Ctrl-C it would print its own
        # KeyboardInterrupt traceback there, so its stderr goes to a file beside the cells' logs instead.
        controller_log = JobPaths.get_first_id_independent_folder(folder) / CONTROLLER_LOG
        update["local_setup"] = [f"export OMP_NUM_THREADS={params.get('cpus_per_task') or 1}",
                                 f"exec 2>>{shlex.quote(str(controller_log))}"]
        update = {k: v for k, v in update.items() if k in ("name", "timeout_min", "tasks_per_node", "gpus_per_node",
                                                           "stderr_to_stdout", "local_setup")}
    try:
        ex.update_parameters(**update)
    except Exception as exc:
        raise ConfigError(f"the {executor} executor refused the launcher config: {one_line(exc)}") from None
    return ex


def sbatch_script(ex: submitit.AutoExecutor, array_size: int) -> str:
    """The sbatch file submitit would write for an array of ``array_size`` cells (nothing is written)."""
    from .submitit_adapter import sbatch_script as render

    return render(ex, array_size)


def slurm_max_array_size() -> int:
    """The cluster's MaxArraySize (array indices must stay below it)."""
    out = _run_slurm(["scontrol", "show", "config"])
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return int(value.strip())
    return 1001  # SLURM's default


def check_partition(partition: str | None) -> None:
    """Every partition named (sbatch takes a comma-separated list) exists on this cluster."""
    if not partition:
        return
    known = set(_run_slurm(["sinfo", "-h", "-o", "%R"]).split())
    missing = [p for p in str(partition).split(",") if p not in known]
    if missing:
        raise ConfigError(f"hydra.launcher.partition={partition!r}: {', '.join(missing)} does not exist on this "
                          f"cluster; partitions: {', '.join(sorted(known)) or '(none)'}")


def _run_slurm(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise UserError(f"{' '.join(cmd)} did not answer in 60 s: is slurmctld up?") from None
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: --executor slurm needs a SLURM cluster (use --executor local "
                        "to run on this machine)") from None
    if proc.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout


# Keys the memory plan sets; a value given on the command line is the user's and is kept.
PLAN_KEYS = ("train.accum_steps", "train.grad_checkpointing")


def user_setting(cell: Cell, key: str):
    """The value of ``key`` if the cell's overrides set it (the command line or a sweep axis), else None."""
    given = [o for o in cell.overrides if o.lstrip("+").partition("=")[0] == key]
    return cell.value(key) if given else None


def memory_plan(cell: Cell, preset: str, ranks: int, memory_gb: float, sweep_name: str):
    """The cell's :class:`~mixer_scaling.memory.CellPlan` on ``ranks`` GPUs of ``memory_gb`` each."""
    from .memory import plan_cell

    return plan_cell(cell.value("model.name"), int(cell.value("data.image_size")), _num_classes(cell),
                     int(cell.value("train.batch_size")), ranks, memory_gb,
                     precision=str(cell.value("train.precision")), optimizer=str(cell.value("train.optimizer")),
                     what=f"sweep {sweep_name}, cell {cell.label} on resources={preset}",
                     accum_steps=user_setting(cell, PLAN_KEYS[0]), grad_checkpointing=user_setting(cell, PLAN_KEYS[1]))


def apply_memory_plan(cell: Cell, plan) -> None:
    """Set the plan's ``train.accum_steps`` and ``train.grad_checkpointing`` in the cell (config, plain copy,
    overrides). Neither is identity: the run id stays (checked)."""
    values = {"accum_steps": plan.accum_steps, "grad_checkpointing": plan.grad_checkpointing}
    for key, value in values.items():
        cell.cfg.train[key] = value
        if cell.resolved is not None:
            cell.resolved["train"][key] = value
    cell.overrides = [o for o in cell.overrides if o.lstrip("+").partition("=")[0] not in PLAN_KEYS] + plan.overrides()
    if run_id_of(cell.resolved if cell.resolved is not None else cell.config) != cell.run_id:
        raise RuntimeError(f"the memory plan changed the run id of {cell.label}: {', '.join(PLAN_KEYS)} must not be "
                           "identity (mixer_scaling.schema)")


# ---------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------


@dataclass
class Cost:
    flops: float          # total training FLOPs of the cells (3 x forward x examples seen)
    device_hours: float   # at the assumed throughput
    unit: str             # "GPU" or "CPU core"
    basis: str            # what was assumed


@lru_cache(maxsize=1)
def cpu_core_gflops() -> float:
    """This machine's fp32 matmul speed on one core (GFLOP/s), measured in ~0.2 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(384, 384)
        a @ a
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.2:
            a @ a
            n += 1
        return 2 * 384 ** 3 * n / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(threads)


def check_runs_dirs(sweep: Sweep, executor: str) -> None:
    """Every ``runs_dir`` of the sweep can be created and written by this process, before anything is
    planned, locked or submitted (a read-only file system, a name over 255 bytes, a file on the way), and
    holds no ``%`` when SLURM writes the logs there (:func:`mixer_scaling.paths.check_runs_dir`)."""
    from .paths import check_runs_dir

    for runs_dir in sweep.runs_dirs:
        check_runs_dir(runs_dir, slurm=executor == "slurm")


def check_options(*, parallel: int | None = None, mfu: float = DEFAULT_MFU,
                  gpu_tflops: float = GPU_PEAK_TFLOPS) -> None:
    """The launch's own options (``--parallel``, ``--mfu``, ``--gpu-tflops``): checked before anything runs."""
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel={parallel} is not allowed; expected an integer >= 1")
    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu={mfu} is not allowed; expected a fraction in (0, 1]")
    if gpu_tflops is not None and not gpu_tflops > 0:
        raise ConfigError(f"--gpu-tflops={gpu_tflops} is not allowed; expected a number > 0")


def gpu_peak_tflops(executor: str, launcher_overrides: Sequence[str], flag: float | None) -> tuple[float, str]:
    """The GPU peak the cost estimate assumes and where it comes from: ``--gpu-tflops``, else the user's
    cluster (``cluster.gpu_tflops``), else an A100's bf16 peak."""
    if flag is not None:
        return flag, "--gpu-tflops"
    tflops = OmegaConf.select(_preset_cfg(executor, "gpu1", launcher_overrides), "cluster.gpu_tflops")
    if tflops:
        return float(tflops), "cluster.gpu_tflops of the cluster config"
    return GPU_PEAK_TFLOPS, "A100 bf16 peak; set cluster.gpu_tflops or --gpu-tflops"


def estimate_cost(cells: Sequence[Cell], presets: dict[str, str], mfu: float = DEFAULT_MFU,
                  gpu_tflops: float = GPU_PEAK_TFLOPS, source: str = "A100 bf16 peak; --gpu-tflops") -> list[Cost]:
    """GPU-hours (and CPU core-hours for CPU-preset cells) from FLOPs x examples seen."""
    check_options(mfu=mfu, gpu_tflops=gpu_tflops)
    by_unit: dict[str, float] = {}
    for cell in cells:
        fwd = _gflops(cell) * 1e9
        unit = "CPU core" if presets[cell.run_id] == "cpu" else "GPU"
        by_unit[unit] = by_unit.get(unit, 0.0) + 3 * fwd * int(cell.value("train.examples_seen"))
    costs = []
    for unit, flops in by_unit.items():
        peak = cpu_core_gflops() * 1e9 if unit == "CPU core" else gpu_tflops * 1e12
        basis = (f"{mfu:.0%} of {peak / 1e9:.0f} GFLOP/s per core (measured here)" if unit == "CPU core"
                 else f"{mfu:.0%} of {gpu_tflops:g} TFLOP/s per GPU ({source}; --mfu)")
        costs.append(Cost(flops, flops / (peak * mfu) / 3600, unit, basis))
    return costs


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a launch would submit: cells to run, grouped by preset, with their launcher params."""

    sweep: Sweep
    executor: str
    states: list[CellState]
    todo: list[Cell]
    presets: dict[str, str]                    # run_id → preset
    params: dict[str, dict]                    # preset → launcher params
    chunk_size: int
    memory: dict = field(default_factory=dict)  # run_id → its memory plan (GPU presets only)

    @property
    def skipped(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.states:
            if s.state not in TO_SUBMIT:
                out[s.state] = out.get(s.state, 0) + 1
        return out

    def groups(self) -> list[tuple[str, list[Cell]]]:
        """(preset, cells) chunks, each one array job."""
        out = []
        for preset in dict.fromkeys(self.presets[c.run_id] for c in self.todo):
            cells = [c for c in self.todo if self.presets[c.run_id] == preset]
            for i in range(0, len(cells), self.chunk_size):
                out.append((preset, cells[i:i + self.chunk_size]))
        return out

    def log_folder(self, runs_dir: Path) -> Path:
        return Path(runs_dir) / ".sweeps" / "logs" / self.sweep.name / "%j"


@contextmanager
def launch_lock(sweep: Sweep, on_wait: Callable[[str], None] | None = None):
    """Hold ``<runs_dir>/.sweeps/<sweep>.lock`` (every runs_dir of the sweep, in order) for the block: plan
    and submit inside it, and a second launch of the same sweep waits here, then sees this one's
    submissions in the manifest (a queued cell is not submitted again). The wait is short: a launch holds
    it while it reads the cells' states and submits, never while cells run. A launch that stops on an
    error inside the block leaves no lock file or folder it created (bad input changes nothing)."""
    held: list[locks.Lock] = []
    created: list[Path] = []  # folders and lock files this launch made
    try:
        for runs_dir in sweep.runs_dirs:
            folder = Path(runs_dir) / MANIFEST_DIR
            path = folder / f"{sweep.name}.lock"
            created += [p for p in (Path(runs_dir), folder, path) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            message = None if on_wait is None else (lambda info: on_wait(
                f"waiting for another launch of sweep {sweep.name} ({locks.describe(info)}) to finish submitting"))
            held.append(locks.acquire(path, wait=True, on_wait=message))
    except BaseException:
        _unlock(held, created, failed=True)
        raise
    try:
        yield
    except BaseException:
        _unlock(held, created, failed=True)
        raise
    _unlock(held, created, failed=False)


def _unlock(held: list, created: list[Path], failed: bool) -> None:
    for lock in reversed(held):
        lock.release(remove=failed and lock.path in created)  # removed while held: see locks.acquire
    if failed:
        for folder in reversed([p for p in created if p not in {lock.path for lock in held}]):
            try:
                folder.rmdir()  # only if empty: another process may have written there meanwhile
            except OSError:
                pass
    held.clear()


def plan(sweep: Sweep, executor: str, max_array_size: int | None = None, check_cluster: bool = True,
         states: list[CellState] | None = None, todo: list[Cell] | None = None) -> Plan:
    """Decide what to submit; checks launcher keys, presets and (for slurm, unless ``check_cluster`` is
    False) the partition, the array limit and each array's sbatch request. ``states`` and ``todo``: a
    second stage's, decided by :mod:`.stages` (default: the cells' states, and those to submit)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor={executor!r} is not allowed; choose one of: {', '.join(EXECUTORS)}")
    forced = forced_preset(sweep.launcher_overrides)
    if states is None:
        states = cell_states(sweep)  # asks squeue whenever any cell was ever sent to SLURM
    unknown = [s for s in states if s.state == UNKNOWN]
    if unknown:
        raise UserError(f"cannot read the SLURM queue (squeue failed) while {len(unknown)} cells have SLURM jobs; "
                        "not submitting, so that no cell runs twice — try again when squeue answers")
    # A `running` record no queue vouches for is a local launch that died with its launcher: resume it.
    if todo is None:
        todo = [s.cell for s in states if s.state in TO_SUBMIT or (executor != "slurm" and s.state == "running"
                                                                     and not s.detail)]
    # Presets of the cells to run only: a preset counts the model's FLOPs, which a done cell never needs.
    presets = {c.run_id: preset_for(c, forced) for c in todo}
    # The launcher overrides are checked even when nothing is to run (any preset will do for that).
    settings = {p: preset_settings(executor, p, sweep.launcher_overrides)
                for p in dict.fromkeys(presets.values()) or [forced or "cpu"]}
    params = {p: par for p, (par, _) in settings.items()}
    for cell in todo:  # DDP splits the global batch over every task of the job
        par = params[presets[cell.run_id]]
        ranks = int(par.get("nodes") or 1) * int(par.get("tasks_per_node") or 1)
        if executor != "debug" and int(cell.value("train.batch_size")) % ranks:
            raise ConfigError(f"train.batch_size={cell.value('train.batch_size')} does not split over the {ranks} "
                              f"tasks of resources {presets[cell.run_id]} ({cell.label}); allowed: a multiple of {ranks}")
    # Every cell's memory plan before any is applied or anything submitted: all or nothing. The debug
    # executor runs the cells in this process, not on the preset's GPUs.
    memory = {}
    if executor != "debug":
        for cell in todo:
            preset = presets[cell.run_id]
            par, memory_gb = settings[preset]
            if memory_gb is not None:
                ranks = int(par.get("nodes") or 1) * int(par.get("tasks_per_node") or 1)
                memory[cell.run_id] = memory_plan(cell, preset, ranks, memory_gb, sweep.name)
        for cell in todo:
            if cell.run_id in memory:
                apply_memory_plan(cell, memory[cell.run_id])
    chunk = max(1, len(todo))
    check_cluster = check_cluster and executor == "slurm"
    if check_cluster:
        for p in params.values():
            check_partition(p.get("partition"))
        chunk = slurm_max_array_size()
    if max_array_size is not None:
        if max_array_size < 1:
            raise ConfigError(f"--max-array-size={max_array_size} is not allowed; expected an integer >= 1")
        chunk = min(chunk, max_array_size)
    out = Plan(sweep, executor, states, todo, presets, params, chunk, memory)
    if check_cluster:  # all or nothing: every array must be acceptable before the first is submitted
        for preset, cells in out.groups():
            ex = make_executor("slurm", params[preset], out.log_folder(cells[0].value("runs_dir")), sweep.name)
            check_sbatch(sbatch_script(ex, len(cells)), f"the {preset} array of {len(cells)} cells")
    return out


def check_sbatch(script: str, what: str) -> None:
    """``sbatch --test-only``: the scheduler checks the request (options, partition, resources) and
    submits nothing."""
    try:
        proc = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"sbatch --test-only could not check {what}: {one_line(exc)}") from None
    if proc.returncode != 0:
        lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip() and "--help" not in l]
        raise UserError(f"sbatch refuses {what}: {lines[-1] if lines else f'exit code {proc.returncode}'}")


def submit(p: Plan, after: dict[str, str] | None = None) -> list[tuple[Cell, str]]:
    """Submit every chunk as one array job; returns (cell, job id) pairs, remembered in the manifest.

    ``after``: run id → the SLURM job id (``123`` or an array task's ``123_4``) the cell must wait for
    (a second stage's parent). Cells waiting for one job are one array submitted with ``--dependency=
    afterok:<job>`` and ``--kill-on-invalid-dep=yes``: it starts only once that job has ended successfully
    (a requeued job keeps its id, so its dependants wait for its last attempt), and leaves the queue
    if that job fails, instead of waiting forever."""
    submitted = []
    after = after or {}
    for preset, group in p.groups():
        for job_after in dict.fromkeys(after.get(c.run_id) for c in group):
            cells = [c for c in group if after.get(c.run_id) == job_after]
            submitted += _submit_array(p, preset, cells, job_after, len(submitted))
    return submitted


def dependency(params: dict, job_id: str | None) -> dict:
    """Launcher params with sbatch's ``afterok`` dependency on ``job_id`` (none: unchanged)."""
    if not job_id:
        return params
    extra = dict(params.get("additional_parameters") or {})
    extra.update(dependency=f"afterok:{job_id}", kill_on_invalid_dep="yes")
    return {**params, "additional_parameters": extra}


def _submit_array(p: Plan, preset: str, cells: list[Cell], job_after: str | None, before: int) -> list:
    runs_dir = Path(cells[0].value("runs_dir"))
    folder = p.log_folder(runs_dir)
    ex = make_executor(p.executor, dependency(p.params[preset], job_after), folder, f"{p.sweep.name}")
    try:
        jobs = ex.map_array(job_for(cells[0]), [c.config for c in cells])
    except OSError as exc:
        if exc.filename is None or Path(str(exc.filename)).name == "sbatch":
            raise UserError(f"sbatch could not be run for the {preset} array of {len(cells)} cells: "
                            f"{one_line(exc)}") from None
        done = f" ({before} cells were submitted before it)" if before else ""
        raise UserError(f"cannot write the job files of the {preset} array of {len(cells)} cells in {folder} "
                        f"({exc.strerror or one_line(exc)}: {exc.filename}); nothing of it was submitted{done}") \
            from None
    except Exception as exc:
        done = f" ({before} cells were submitted before it)" if before else ""
        raise UserError(f"sbatch refused the {preset} array of {len(cells)} cells: {_sbatch_error(exc)}{done}") \
            from None
    p.sweep.remember(cells, [j.job_id for j in jobs], p.executor, folder)
    return list(zip(cells, [j.job_id for j in jobs]))


def _sbatch_error(exc: Exception) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "error:" in line:
            return line.strip()
    return one_line(exc)


def run_here(p: Plan, parallel: int, on_done=None) -> None:
    """local / debug: run the cells on this machine, ``parallel`` at a time (debug: one, in-process).
    A failing cell is recorded and the others go on; ``on_done(cell, status, seconds, console)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine import Interrupted

    check_options(parallel=parallel)
    queue = list(p.todo)
    running: list[tuple[Cell, object, float]] = []
    executors = {}
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[now]}")) as bar:
        task = bar.add_task(f"{p.sweep.name} ({p.executor})", total=len(queue), now="")
        while queue or running:
            while queue and len(running) < (1 if p.executor == "debug" else parallel):
                cell = queue.pop(0)
                config = cell.config
                bar.update(task, now=cell.label)
                if locks.run_holder(cell.run_dir) is not None:  # started by another launch meanwhile: not twice
                    bar.advance(task)
                    if on_done:
                        on_done(cell, ELSEWHERE, 0.0, bar.console)
                    continue
                if p.executor == "debug":  # right here, so breakpoints and tracebacks are the user's own
                    t0 = time.perf_counter()
                    p.sweep.remember([cell], ["debug"], p.executor, Path("-"))
                    result = None
                    try:
                        result = job_for(cell)(config)
                    except Interrupted:  # Ctrl-C: checkpointed and recorded; stop the launch, not just the cell
                        raise
                    except Exception:
                        pass  # recorded in the cell's result.json; the other cells go on
                    running.append((cell, _Finished(result), t0))
                    continue
                preset = p.presets[cell.run_id]
                if preset not in executors:
                    folder = p.log_folder(cell.value("runs_dir"))
                    executors[preset] = make_executor(p.executor, p.params[preset], folder, p.sweep.name)
                job = executors[preset].submit(job_for(cell), config)
                p.sweep.remember([cell], [job.job_id], p.executor, p.log_folder(cell.value("runs_dir")))
                running.append((cell, job, time.perf_counter()))
                bar.update(task, now=", ".join(c.label for c, _, _ in running))
            finished = [r for r in running if r[1].done()]
            for cell, job, t0 in finished:
                running.remove((cell, job, t0))
                status = (cell.record() or {}).get("status", FAILED)
                if status != DONE and _status_of(job) == ELSEWHERE:  # the record is the other process's
                    status = ELSEWHERE
                bar.advance(task)
                if on_done:
                    on_done(cell, status, time.perf_counter() - t0, bar.console)
            if not finished:
                time.sleep(0.5)
            bar.update(task, now=", ".join(c.label for c, _, _ in running))


class _Finished:
    """A cell the debug executor has already run."""

    def __init__(self, result: dict | None = None):
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> dict | None:
        return self._result


def _status_of(job) -> str | None:
    """The status a finished job's :class:`CellJob` returned (None if it raised or left no result)."""
    try:
        return (job.result() or {}).get("status")
    except Exception:
        return None


def wait(sweep: Sweep, poll_s: float = 5.0, timeout_s: float | None = None) -> list[CellState]:
    """Block until no cell of the sweep is pending or running in the SLURM queue (``--wait``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    t0 = time.monotonic()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[counts]}")) as bar:
        task = bar.add_task(f"waiting for {sweep.name}", total=len(sweep.cells), counts="")
        while True:
            states = cell_states(sweep)
            counts: dict[str, int] = {}
            for s in states:
                counts[s.state] = counts.get(s.state, 0) + 1
            bar.update(task, completed=counts.get(DONE, 0), counts=" ".join(f"{k} {v}" for k, v in counts.items()))
            if not any(s.state in ("pending", "running", UNKNOWN) for s in states):  # unknown: squeue hiccup
                return states
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"sweep {sweep.name} still has queued cells after {timeout_s:.0f} s")
            time.sleep(poll_s)


def default_parallel(p: Plan) -> int:
    """Local cells at once: the machine's cores over the cores each cell asks for."""
    per_cell = max((int(params.get("cpus_per_task") or 1) for params in p.params.values()), default=1)
    by_cpu = max(1, (os.cpu_count() or 1) // per_cell)
    gpus = max((int(params.get("gpus_per_node") or 0) for params in p.params.values()), default=0)
    if gpus:  # submitit-local shows every job the same GPUs: never more cells than fit on them
        import torch

        return max(1, min(by_cpu, torch.cuda.device_count() // gpus))
    return by_cpu
