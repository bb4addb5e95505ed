"""``mixer-scaling sweep list|launch|status``: the command line of :mod:`.sweep` and :mod:`.launch`.

    mixer-scaling sweep launch demo --executor local            run the demo grid here, two cells at a time
    mixer-scaling sweep launch pareto data.root=/data/jft fewshot.root=/data/imagenet \\
        --executor slurm hydra.launcher.partition=gpu --dry-run  grid, cost and sbatch script; submits nothing
    mixer-scaling sweep status pareto data.root=/data/jft fewshot.root=/data/imagenet

Status and relaunch take the same overrides as the launch: together they name the grid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from collections import Counter

from rich.console import Console
from rich.table import Table

from . import launch
from .sweep import CellState, Sweep, cell_states, known_sweeps, load, status_rows

STATE_STYLE = {"done": "green", "failed": "red", "lost": "red", "stale": "yellow", "interrupted": "yellow",
               "running": "cyan", "running elsewhere": "cyan", "pending": "blue", "new": "dim", "damaged": "red",
               "to score": "magenta"}


def _grid_table(sweep: Sweep, states: list[CellState], presets: dict | None = None, title: str = "",
                memory: dict | None = None) -> Table:
    """One row per cell; ``presets`` and ``memory`` (run id → memory plan: micro-batch x accumulation
    steps, checkpointing, estimate/card GB) add their columns when given."""
    axes = list(dict.fromkeys(k for c in sweep.cells for k in c.axes))
    table = Table(title=title, title_justify="left")
    for a in axes:
        table.add_column(a)
    for col in ("run_id", "state", "step", "val top-1", *(["preset"] if presets else []),
                *(["GPU memory plan"] if memory else []), "job", "detail"):
        table.add_column(col, justify="right" if col in ("step", "val top-1") else "left",
                         overflow="fold" if col == "detail" else "ellipsis")
    for s in states:
        metrics = (s.record or {}).get("metrics") or {}
        top1 = metrics.get("val_top1")
        top1 = top1 if isinstance(top1, (int, float)) and not isinstance(top1, bool) else None
        step = f"{s.step}/{s.steps}" if s.step is not None and s.steps else ""
        table.add_row(*(str(s.cell.axes.get(a, "")) for a in axes), s.cell.run_id,
                      f"[{STATE_STYLE.get(s.state, 'default')}]{s.state}[/]", step,
                      "" if top1 is None else f"{top1:.3f}", *([presets.get(s.cell.run_id, "")] if presets else []),
                      *([memory[s.cell.run_id].describe() if s.cell.run_id in memory else ""] if memory else []),
                      s.job_id or "", s.detail)
    return table


def _counts(states: list[CellState]) -> str:
    counts = Counter(s.state for s in states)
    return ", ".join(f"{n} {state}" for state, n in counts.most_common())


def cmd_list(args) -> int:
    for name in known_sweeps():
        print(name)
    return 0


def cmd_launch(args) -> int:
    console = Console()
    # Flag values first: a bad one must stop the launch before anything is printed or planned.
    launch.check_options(parallel=args.parallel, mfu=args.mfu, gpu_tflops=args.gpu_tflops)
    sweep = load(args.sweep, args.overrides)
    # Where it will write, before planning, locking or submitting: one line, not an OSError (or a message
    # blaming sbatch) after the work has started.
    launch.check_runs_dirs(sweep, args.executor)
    # A dry run on a machine without SLURM still shows the grid, the cost and the sbatch script.
    check_cluster = not (args.dry_run and shutil.which("sbatch") is None)
    # Two launches of one sweep never submit a cell twice: a second one waits here while the first decides
    # and submits, then sees its submissions (launch.launch_lock). Cells run after it, outside the lock.
    held = contextlib.ExitStack()
    if not args.dry_run:
        held.enter_context(launch.launch_lock(sweep, on_wait=console.print))
    with held:
        p = launch.plan(sweep, args.executor, max_array_size=args.max_array_size, check_cluster=check_cluster)
        if not check_cluster and args.executor == "slurm":
            console.print("no SLURM on this machine: partition, MaxArraySize and sbatch's checks skipped")
        skipped = ", ".join(f"{n} {state}" for state, n in p.skipped.items())
        console.print(f"sweep [bold]{sweep.name}[/]: {len(sweep.cells)} cells; {len(p.todo)} to run"
                      + (f" (skipping {skipped})" if skipped else ""))
        for cost in launch.estimate_cost(p.todo, p.presets, mfu=args.mfu, gpu_tflops=args.gpu_tflops):
            console.print(f"cost of the {len(p.todo)} cells to run: {cost.flops:.3g} training FLOPs "
                          f"≈ {cost.device_hours:,.3g} {cost.unit}-hours at {cost.basis}")
        if args.dry_run or len(sweep.cells) <= 24:
            console.print(_grid_table(sweep, p.states, p.presets, memory=p.memory))
        if args.dry_run:
            for preset, cells in p.groups():
                if args.executor == "slurm" and check_cluster:  # submitit writes the script only where srun exists
                    ex = launch.make_executor("slurm", p.params[preset], p.log_folder(cells[0].cfg.runs_dir), sweep.name)
                    console.print(f"[bold]sbatch script[/] for the {preset} array of {len(cells)} cells:")
                    print(launch.sbatch_script(ex, len(cells)), flush=True)
                else:
                    console.print(f"[bold]{preset}[/] array of {len(cells)} cells, launcher parameters:")
                    print(json.dumps(p.params[preset], indent=1, sort_keys=True), flush=True)
            console.print("dry run: nothing submitted")
            return 0
        if not p.todo:
            console.print("nothing to submit")
            return 0
        if args.executor == "slurm":
            submitted = launch.submit(p)
            arrays = Counter(str(job).split("_")[0] for _, job in submitted)
            console.print(f"submitted {len(submitted)} cells as {len(arrays)} job array(s): "
                          + ", ".join(f"{j} ({n} cells)" for j, n in arrays.items()))
            console.print(f"follow with: mixer-scaling sweep status {sweep.name} {' '.join(args.overrides)}".rstrip())
            if not args.wait:
                return 0
    if args.executor == "slurm":
        states = launch.wait(sweep, poll_s=args.poll)
    else:
        def on_done(cell, status, seconds, out):
            colour = STATE_STYLE.get(status, "default")
            out.print(f"  [{colour}]{status}[/] {cell.label} ({seconds:.0f} s) → {cell.run_dir}")

        launch.run_here(p, parallel=launch.default_parallel(p) if args.parallel is None else args.parallel, on_done=on_done)
        states = cell_states(sweep)
    console.print(f"sweep {sweep.name}: {_counts(states)}")
    return 0 if all(s.state == "done" for s in states) else 1


def cmd_status(args) -> int:
    sweep = load(args.sweep, args.overrides)
    states = cell_states(sweep)
    if args.json:
        print(json.dumps(status_rows(states), indent=2))
        return 0
    console = Console()
    console.print(_grid_table(sweep, states, title=f"sweep {sweep.name}: {_counts(states)}"))
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser("sweep", help="launch a grid of runs (conf/sweep/<name>.yaml) and follow it")
    sub = s.add_subparsers(dest="sweep_command", required=True)
    ls = sub.add_parser("list", help="the known sweeps")
    ls.set_defaults(fn=cmd_list)

    la = sub.add_parser("launch", help="submit every cell that is not done (slurm returns at once)")
    la.add_argument("sweep", help="a sweep name (conf/sweep/<name>.yaml)")
    la.add_argument("overrides", nargs="*", help="Hydra overrides: run keys (also a,b sweeps), "
                    "hydra.launcher.<key>=..., resources=<preset>, resources.gpu_memory_gb=<GB per GPU>")
    la.add_argument("--executor", default="slurm", help="slurm (default), local or debug")
    la.add_argument("--dry-run", action="store_true", help="print the grid, the cost and the sbatch script only")
    la.add_argument("--wait", action="store_true", help="slurm: wait until no cell is queued (local/debug always wait)")
    la.add_argument("--max-array-size", type=int, default=None,
                    help="at most this many cells per job array (default: the cluster's MaxArraySize)")
    la.add_argument("--parallel", type=int, default=None, help="local: cells at once (default: cores / cpus_per_task)")
    la.add_argument("--mfu", type=float, default=launch.DEFAULT_MFU, help="assumed model FLOPs utilisation for the cost")
    la.add_argument("--gpu-tflops", type=float, default=launch.GPU_PEAK_TFLOPS, help="assumed GPU peak for the cost")
    la.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    la.set_defaults(fn=cmd_launch)

    st = sub.add_parser("status", help="a table of the cells: pending, running, done, failed (with its error)")
    st.add_argument("sweep")
    st.add_argument("overrides", nargs="*", help="the overrides the sweep was launched with")
    st.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    st.set_defaults(fn=cmd_status)
