"""``mixer-scaling sweep list|launch|status``: the command line of :mod:`.sweep` and :mod:`.launch`.

    mixer-scaling sweep launch demo --executor local            run the demo grid here, two cells at a time
    mixer-scaling sweep launch pareto data.root=/data/jft fewshot.root=/data/imagenet \\
        --executor slurm hydra.launcher.partition=gpu --dry-run  grid, cost and sbatch script; submits nothing
    mixer-scaling sweep status pareto data.root=/data/jft fewshot.root=/data/imagenet

Status and relaunch take the same overrides as the launch: together they name the grid. A sweep with a
second stage (``stages:``, :mod:`.stages`) is launched, shown and followed as one study: both stages'
cells, counts and costs, one table per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from collections import Counter

from rich.console import Console
from rich.table import Table

from . import launch, stages
from .sweep import CellState, Sweep, cell_states, known_sweeps, load, status_rows

STATE_STYLE = {"done": "green", "failed": "red", "lost": "red", "stale": "yellow", "interrupted": "yellow",
               "running": "cyan", "running elsewhere": "cyan", "pending": "blue", "new": "dim", "damaged": "red",
               "to score": "magenta", "waiting": "blue", "blocked": "red"}


def _grid_table(sweep: Sweep, states: list[CellState], presets: dict | None = None, title: str = "",
                memory: dict | None = None) -> Table:
    """One row per cell; ``presets`` and ``memory`` (run id → memory plan: micro-batch x accumulation
    steps, checkpointing, estimate/card GB) add their columns when given."""
    axes = list(dict.fromkeys(k for c in sweep.cells for k in c.axes))
    parents = any(getattr(c, "parent", None) is not None for c in sweep.cells)  # a second stage's cells
    table = Table(title=title, title_justify="left")
    if parents:
        table.add_column("parent")
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
        table.add_row(*([s.cell.parent.run_id] if parents else []), *(str(s.cell.axes.get(a, "")) for a in axes),
                      s.cell.run_id,
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
    args.gpu_tflops, args.tflops_source = launch.gpu_peak_tflops(args.executor, sweep.launcher_overrides,
                                                                 args.gpu_tflops)
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
        stage = sweep.stage
        console.print(f"sweep [bold]{sweep.name}[/]: {len(sweep.cells)} cells; {len(p.todo)} to run"
                      + (f" (skipping {skipped})" if skipped else "")
                      + (f"; stage 2, {stage.name}: {len(stage.children)} cells" if stage else ""))
        _print_cost(console, p, args, "the {n} cells to run" if not stage else "stage 1 (pre-training), {n} cells")
        if args.dry_run or len(sweep.cells) <= 24:
            console.print(_grid_table(sweep, p.states, p.presets, memory=p.memory,
                                      title="stage 1: pre-training" if stage else ""))
        p2 = None
        if stage:
            p2, blocked = _plan_stage(sweep, p, args, check_cluster)
            console.print(f"stage 2, {stage.name}: {len(stage.children)} cells; {len(p2.todo)} to run "
                          + ("(after their parents: SLURM afterok)" if args.executor == "slurm" else
                             "(after their parents)")
                          + (f"; {stages.counts(p2.states)}" if p2.states else ""))
            if blocked:
                console.print(f"  {len(blocked)} blocked: their parent failed; "
                              + ("submitted again with it, after it (afterok)" if args.executor == "slurm" else
                                 "run if the parent's rerun succeeds"))
            _print_cost(console, p2, args, "stage 2 (" + stage.name + "), {n} cells")
            if args.dry_run or len(stage.children) <= 24:
                console.print(_grid_table(p2.sweep, p2.states, p2.presets, memory=p2.memory,
                                          title=f"stage 2: {stage.name}"))
        if args.dry_run:
            for preset, cells in p.groups():
                if args.executor == "slurm" and check_cluster:  # submitit writes the script only where srun exists
                    ex = launch.make_executor("slurm", p.params[preset], p.log_folder(cells[0].cfg.runs_dir), sweep.name)
                    console.print(f"[bold]sbatch script[/] for the {preset} array of {len(cells)} cells:")
                    print(launch.sbatch_script(ex, len(cells)), flush=True)
                else:
                    console.print(f"[bold]{preset}[/] array of {len(cells)} cells, launcher parameters:")
                    print(json.dumps(p.params[preset], indent=1, sort_keys=True), flush=True)
            if p2 is not None:
                for preset, cells in p2.groups():
                    console.print(f"[bold]stage 2[/]: {len(cells)} {stage.name} cells on {preset}, one array per "
                                  "parent job, each with --dependency=afterok:<parent job> --kill-on-invalid-dep=yes")
            console.print("dry run: nothing submitted")
            return 0
        if not p.todo and not (p2 is not None and p2.todo):
            console.print("nothing to submit")
            return 0
        if args.executor == "slurm":
            submitted = launch.submit(p)
            if p2 is not None and p2.todo:
                _, after = stages.to_submit(p2.states, p.states, "slurm", {c.run_id: j for c, j in submitted})
                children = launch.submit(p2, after=after)
                console.print(f"stage 2: submitted {len(children)} {stage.name} cells, "
                              f"{sum(c.run_id in after for c, _ in children)} of them after their parent's job")
            arrays = Counter(str(job).split("_")[0] for _, job in submitted)
            console.print(f"submitted {len(submitted)} cells as {len(arrays)} job array(s): "
                          + ", ".join(f"{j} ({n} cells)" for j, n in arrays.items()))
            console.print(f"follow with: mixer-scaling sweep status {sweep.name} {' '.join(args.overrides)}".rstrip())
            if not args.wait:
                return 0
    if args.executor == "slurm":
        states = launch.wait(sweep, poll_s=args.poll)
        if sweep.stage is not None:
            launch.wait(sweep.stage.sweep(sweep), poll_s=args.poll)
            states += stage_states(sweep, states)
    else:
        def on_done(cell, status, seconds, out):
            colour = STATE_STYLE.get(status, "default")
            out.print(f"  [{colour}]{status}[/] {cell.label} ({seconds:.0f} s) → {cell.run_dir}")

        parallel = launch.default_parallel(p) if args.parallel is None else args.parallel
        states = run_stages(sweep, p, args.executor, parallel, on_done, console.print)
    console.print(f"sweep {sweep.name}: {_counts(states)}")
    return 0 if all(s.state == "done" for s in states) else 1


def _print_cost(console, p, args, what: str) -> None:
    for cost in launch.estimate_cost(p.todo, p.presets, mfu=args.mfu, gpu_tflops=args.gpu_tflops,
                                     source=args.tflops_source):
        console.print(f"cost of {what.format(n=len(p.todo))}: {cost.flops:.3g} training FLOPs "
                      f"≈ {cost.device_hours:,.3g} {cost.unit}-hours at {cost.basis}")


def _plan_stage(sweep: Sweep, p, args, check_cluster: bool):
    """The second stage's plan, as if the first stage's cells to run were submitted now (for SLURM they are,
    and their children wait for them; locally the children of what finishes run next), and its blocked cells."""
    child_sweep = sweep.stage.sweep(sweep)
    cstates = stages.child_states(child_sweep, p.states)
    todo, _ = stages.to_submit(cstates, p.states, "slurm", {c.run_id: "planned" for c in p.todo})
    p2 = launch.plan(child_sweep, args.executor, max_array_size=args.max_array_size, check_cluster=check_cluster,
                     states=cstates, todo=todo)
    return p2, [s for s in cstates if s.state == stages.BLOCKED]


def stage_states(sweep: Sweep, first: list[CellState]) -> list[CellState]:
    """The second stage's states (none without one), given the first stage's."""
    if sweep.stage is None:
        return []
    return stages.child_states(sweep.stage.sweep(sweep), first)


def run_stages(sweep: Sweep, p, executor: str, parallel: int, on_done, say) -> list[CellState]:
    """local / debug: the first stage's cells to run, then the children of every parent that is done, each
    stage with its progress bar. Children of failed parents are reported blocked and not run. Returns the
    states of both stages."""
    launch.run_here(p, parallel=parallel, on_done=on_done)
    states = cell_states(sweep)
    if sweep.stage is None:
        return states
    child_sweep = sweep.stage.sweep(sweep)
    cstates = stages.child_states(child_sweep, states)
    todo, _ = stages.to_submit(cstates, states, executor, {})
    blocked = [s for s in cstates if s.state == stages.BLOCKED]
    if blocked:
        say(f"stage 2: {len(blocked)} {sweep.stage.name} cells blocked (parent failed): "
            + ", ".join(sorted({s.cell.parent.run_id for s in blocked})))
    if todo:
        say(f"stage 2, {sweep.stage.name}: {len(todo)} cells to run")
        p2 = launch.plan(child_sweep, executor, states=cstates, todo=todo)
        launch.run_here(p2, parallel=parallel, on_done=on_done)
    return states + stages.child_states(child_sweep, states)


def cmd_status(args) -> int:
    sweep = load(args.sweep, args.overrides)
    states = cell_states(sweep)
    children = stage_states(sweep, states)
    if args.json:
        rows = status_rows(states)
        if sweep.stage is not None:
            rows = [{**r, "stage": "pretrain"} for r in rows]
            rows += [{**r, "stage": sweep.stage.name, "parent_run_id": s.cell.parent.run_id}
                     for r, s in zip(status_rows(children), children)]
        print(json.dumps(rows, indent=2))
        return 0
    console = Console()
    first = "stage 1, pre-training: " if children else ""
    console.print(_grid_table(sweep, states, title=f"sweep {sweep.name}: {first}{_counts(states)}"))
    if sweep.stage is not None:
        console.print(_grid_table(sweep.stage.sweep(sweep), children,
                                  title=f"sweep {sweep.name}: stage 2, {sweep.stage.name}: {_counts(children)}"))
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
    la.add_argument("--gpu-tflops", type=float, default=None,
                    help="assumed GPU peak for the cost (default: the cluster's cluster.gpu_tflops, else an A100's "
                         f"{launch.GPU_PEAK_TFLOPS:g})")
    la.add_argument("--poll", type=float, default=5.0, help=argparse.SUPPRESS)
    la.set_defaults(fn=cmd_launch)

    st = sub.add_parser("status", help="a table of the cells: pending, running, done, failed (with its error)")
    st.add_argument("sweep")
    st.add_argument("overrides", nargs="*", help="the overrides the sweep was launched with")
    st.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    st.set_defaults(fn=cmd_status)
