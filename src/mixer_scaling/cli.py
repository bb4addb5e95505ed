"""mixer-scaling: the project's command line.

    mixer-scaling models [--json] [--num-classes N]   the model registry with params and GFLOPs
    mixer-scaling demo [overrides...]                 the demo sweep on this machine, then its figures and findings
    mixer-scaling study <sweep> [overrides] [-o dir]  any sweep on this machine, then its table, figures, findings
    mixer-scaling train [overrides...]                one run (same as python -m mixer_scaling.train)
    mixer-scaling finetune parent=<run> [overrides]   fine-tune a run (python -m mixer_scaling.finetune)
    mixer-scaling sweep launch|status|list <sweep>    a grid of runs on SLURM or here (conf/sweep/<name>.yaml)
    mixer-scaling evaluate <runs>... [eval.*|fewshot.*]      score finished runs on other evaluation settings
    mixer-scaling collect <runs_dir>... -o results.parquet   one table from run records (or --wandb)
    mixer-scaling figures <results|runs_dir|paper> -o <dir>  the paper's figures from a table
    mixer-scaling weights <run> [-o dir]                   a Mixer run's token-mixing weights (paper Fig. 5)
    mixer-scaling data pack SRC OUT [--image-size N]       an ImageFolder tree or CIFAR into shards (data=shards)
    mixer-scaling init [--cluster NAME] [--dir DIR]        a starter cluster config in the user config directory

Bad arguments print one line and exit with status 2. Ctrl-C prints one line (finished runs are kept;
rerun to resume) and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import EXIT_USAGE, UserError
from .paths import check_folder

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
INTERRUPTED_LINE = "interrupted; finished runs are kept, rerun to resume"

DEMO_SWEEP = "demo"  # conf/sweep/demo.yaml: tiny and micro Mixer, ViT, BiT x 3 data fractions


def _console():
    from rich.console import Console

    return Console()


def cmd_models(args) -> int:
    from .models import registry_rows

    rows = registry_rows(num_classes=args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"models (params with a {args.num_classes}-class head; forward GFLOPs per image)")
    for col, just in [("name", "left"), ("family", "left"), ("params (M)", "right"),
                      ("backbone (M)", "right"), ("GFLOPs", "right"), ("image", "right"), ("patch", "right")]:
        table.add_column(col, justify=just)
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.2f}", f"{r['params_backbone'] / 1e6:.2f}",
                      f"{r['gflops']:.3g}", str(r["image_size"]), str(r["patch"] or "-"))
    _console().print(table)
    return 0


def cmd_study(args) -> int:
    """A sweep run on this machine (local executor), then its results table, figures and findings.

    ``mixer-scaling demo`` is ``mixer-scaling study demo``. The table (parquet and CSV), the figures and
    ``findings.md``/``findings.json`` go to one folder (default ``figures/<sweep>`` beside ``runs_dir``),
    with ``study.json``: the command, machine, versions and compute they were made with. A sweep with a
    second stage (:mod:`.stages`) runs it after the first (children of finished parents only), and its
    fine-tunes, joined to their parents, add ``results_finetuned.parquet``/``.csv`` and the
    ``pareto_finetuned`` figure.
    """
    from . import launch
    from .analysis.figures import render
    from .analysis.results import collect, collect_finetunes, write_table
    from .sweep import load
    from .sweep_cli import run_stages

    console = _console()
    t0 = time.perf_counter()
    if args.boot < 0:
        raise UserError(f"--boot={args.boot} is not allowed; expected an integer >= 0")
    sweep = load(args.sweep, args.overrides)
    for key in args.best_over:  # checked before anything runs, not after the sweep
        if key == "seed" or sweep.cells[0].value(key) is None:
            raise UserError(f"--best-over {key}: not a config key of sweep {args.sweep} (seeds are averaged, "
                            f"never chosen); e.g. --best-over train.lr")
    launch.check_runs_dirs(sweep, "local")  # where it writes, before anything runs
    runs_dir = Path(sweep.cells[0].cfg.runs_dir)
    out_dir = Path(args.output) if args.output else runs_dir.parent / "figures" / args.sweep
    check_folder(out_dir, "--figures" if getattr(args, "command", "") == "demo" else "-o", beside=True)
    plan = launch.plan(sweep, "local")
    parallel = launch.default_parallel(plan) if args.parallel is None else args.parallel
    stage = sweep.stage
    console.print(f"[bold]{args.sweep}[/]: {len(sweep.cells)} runs (conf/sweep/{args.sweep}.yaml), {len(plan.todo)} to run, "
                  f"{parallel} at a time; finished runs are reused"
                  + (f"; then stage 2, {stage.name}: {len(stage.children)} runs after their parents" if stage else ""))

    def on_done(cell, status, seconds, out):
        record = cell.record() or {}  # None for a damaged record
        m = record.get("metrics") or {}
        top1 = m.get("val_top1")
        out.print(f"  {status:<6} {cell.label:<48} {seconds:4.0f} s"
                  + (f"  val top-1 {top1:.3f}, best step {record.get('best_step')}/{record.get('steps')}"
                     if isinstance(top1, (int, float)) else f"  {(record.get('error') or {}).get('message', '')}"))

    everything = run_stages(sweep, plan, "local", parallel, on_done, console.print)
    states, children = everything[:len(sweep.cells)], everything[len(sweep.cells):]
    done = [s for s in states if s.state == "done"]
    console.print(f"{len(done)}/{len(states)} runs done"
                  + (f", {sum(s.state == 'done' for s in children)}/{len(children)} fine-tunes" if stage else "")
                  + f" in {time.perf_counter() - t0:.0f} s")
    if not done:
        return 1
    finetunes = collect_finetunes([s.cell.run_dir for s in children if s.record]) if children else None

    df, summary = collect([s.cell.run_dir for s in states if s.record], warn=False)
    for line in summary.warnings:
        console.print(f"warning: {line}")
    rendered = render(df, out_dir, summary=summary, n_boot=args.boot, best_over=args.best_over, finetunes=finetunes)
    results = write_table(df, out_dir / "results.parquet", out_dir / "results.csv")
    if finetunes is not None and not finetunes.empty:
        results += write_table(finetunes, out_dir / "results_finetuned.parquet", out_dir / "results_finetuned.csv")
    _write_study_facts(out_dir / "study.json", args, df, trained_now=len(plan.todo),
                       wall_seconds=time.perf_counter() - t0)

    few = [c for c in df.columns if c.startswith("fewshot_") and c.endswith("_5")]
    for metric in ["val_top1", *few[:1]]:
        console.print(_fraction_table(df, metric, args.best_over))
    console.print(f"results: {', '.join(map(str, results))}")
    console.print(f"figures ({out_dir}):")
    for f in rendered.files:
        console.print(f"  {f}")
    for line in rendered.summary:
        console.print(line)
    if rendered.dashboard is not None:  # the one file to open: interactive, works offline from disk
        console.print(f"dashboard: {rendered.dashboard}", soft_wrap=True, markup=False, highlight=False)
    return 0 if all(s.state == "done" for s in everything) else 1


def _write_study_facts(path: Path, args, df, trained_now: int, wall_seconds: float) -> None:
    """What a study's results were made with, beside them: the command, the machine, the versions, the
    compute its runs took (summed over runs, so the same however many invocations made them) and this
    invocation's wall time (meaningful when it trained every run: ``trained_now`` says how many)."""
    import os
    import platform

    from . import records

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    recs = [r for r in (records.read_record(Path(d)) for d in df.loc[df.status == "done", "run_dir"]) if r]
    facts = {
        "sweep": args.sweep, "overrides": list(args.overrides), "best_over": list(args.best_over),
        "command": " ".join(["mixer-scaling", "study", args.sweep, *args.overrides,
                             *(f"--best-over {k}" for k in args.best_over),
                             *([f"-o {args.output}"] if args.output else [])]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                    "devices": sorted({str(r.get("device")) for r in recs})},
        "versions": recs[0].get("versions", {}) if recs else {},
        "precision": sorted({str(r.get("precision")) for r in recs}),
        "runs": int(len(df)), "done": len(recs),
        "train_seconds_sum": round(sum(float(r.get("train_seconds") or 0) for r in recs), 1),
        "eval_seconds_sum": round(sum(float(r.get("eval_seconds") or 0) for r in recs), 1),
        "device_hours_sum": round(sum(float(r.get("device_hours") or 0) for r in recs), 4),
        "this_invocation": {"runs_trained": trained_now, "wall_seconds": round(wall_seconds, 1)},
    }
    records.atomic_write_json(path, facts)


def _fraction_table(df, metric: str, best_over):
    """``metric`` by model (and any config key that still differs) and pre-training fraction: one cell
    per configuration, mean over seeds with the seed range, as the figures aggregate."""
    from rich.table import Table

    from .analysis.aggregate import aggregate, differing_keys
    from .analysis.results import config_columns, done_runs

    agg = aggregate(done_runs(df), metric, best_over=best_over)
    rest = differing_keys(agg, config_columns(agg), within=["model", "fraction"])
    agg["row"] = agg["model"].astype(str)
    for k in rest:
        agg["row"] += f" {k}=" + agg[k].astype(str)
    fractions = sorted(agg["fraction"].unique())
    table = Table(title=f"{metric} (%) by model and pre-training fraction, same examples seen: "
                        f"mean (min-max) over seeds{'; best ' + ', '.join(best_over) if best_over else ''}")
    table.add_column("model")
    for f in fractions:
        table.add_column(f"{100 * f:g}%", justify="right")
    for name, rows in agg.groupby("row", sort=True):
        cells = {r.fraction: f"{100 * r.mean:.1f} ({100 * r.min:.1f}-{100 * r.max:.1f})" if r.n_seeds > 1
                 else f"{100 * r.mean:.1f}" for r in rows.itertuples()}
        table.add_row(name, *(cells.get(f, "-") for f in fractions))
    return table


def cmd_demo(args) -> int:
    args.sweep = DEMO_SWEEP
    args.output = args.figures
    return cmd_study(args)


def cmd_train(args) -> int:
    from .train import main as train_main

    sys.argv = ["mixer_scaling.train", *args.overrides]
    train_main()
    return 0


def cmd_finetune(args) -> int:
    from .finetune import main as finetune_main

    sys.argv = ["mixer_scaling.finetune", *args.overrides]
    finetune_main()
    return 0


def cmd_data_pack(args) -> int:
    """Pack SRC into shards under OUT (:mod:`.data.pack`); resumable: rerun the same command to finish."""
    from .data.pack import pack

    check_folder(args.out, "OUT")
    index = pack(args.src, args.out, image_size=args.image_size, shard_size=args.shard_size, seed=args.seed,
                 quality=args.quality, workers=args.workers, progress=not args.quiet)
    splits = ", ".join(f"{s} {v['samples']} images in {len(v['shards'])} shards" for s, v in index["splits"].items())
    print(f"{args.out}: {splits}; {index['num_classes']} classes; fingerprint {index['fingerprint'][:16]}")
    return 0


def cmd_init(args) -> int:
    """Write a starter ``cluster/<name>.yaml`` and the folder layout into the user config directory
    (:mod:`.userconf`); an existing file is never overwritten."""
    import re

    from .errors import ConfigError
    from .userconf import ENV, user_config_dir, write_starter

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", args.cluster):
        raise ConfigError(f"--cluster={args.cluster!r} is not allowed; expected a name of letters, digits, _ and - "
                          "(it is chosen as cluster=<name>)")
    directory = Path(args.dir).expanduser().resolve() if args.dir else user_config_dir()
    check_folder(str(directory), "--dir" if args.dir else f"${ENV}")
    try:
        path = write_starter(args.cluster, directory)
    except FileExistsError:
        raise ConfigError(f"{directory / 'cluster' / (args.cluster + '.yaml')} exists; not overwritten (edit it, "
                          "or choose another --cluster name)") from None
    use = "every command" if args.cluster == "default" else f"cluster={args.cluster}"
    print(f"wrote {path}: fill in partition, account, setup and the GPU; used by {use}")
    if directory != user_config_dir():
        print(f"the user config directory is {user_config_dir()}; to use this one: export {ENV}={directory}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixer-scaling", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list the model registry")
    m.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    m.add_argument("--num-classes", type=int, default=1000, help="head size counted in params (default 1000)")
    m.set_defaults(fn=cmd_models)
    d = sub.add_parser("demo", help="the demo sweep (tiny Mixer, ViT, BiT x data fractions) here, then its figures")
    d.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. seed=0,1,2)")
    d.add_argument("--parallel", type=int, default=None, help="runs at once (default: one per core)")
    d.add_argument("--figures", default=None, help="figure folder (default: figures/demo next to runs_dir)")
    d.add_argument("--boot", type=int, default=200, help="bootstrap resamples (default 200)")
    d.set_defaults(fn=cmd_demo, best_over=[])
    st = sub.add_parser("study", help="any sweep here (local executor), then its table, figures and findings")
    st.add_argument("sweep", help="sweep name (conf/sweep/<name>.yaml), e.g. cpu_study")
    st.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    st.add_argument("--parallel", type=int, default=None, help="runs at once (default: one per core)")
    st.add_argument("-o", "--output", default=None, help="folder for table, figures, findings "
                                                          "(default: figures/<sweep> next to runs_dir)")
    st.add_argument("--best-over", action="append", default=[], metavar="KEY",
                    help="per configuration keep the value of KEY (e.g. train.lr) best on upstream selection")
    st.add_argument("--boot", type=int, default=200, help="bootstrap resamples (default 200)")
    st.set_defaults(fn=cmd_study)
    t = sub.add_parser("train", help="one run (Hydra overrides), as python -m mixer_scaling.train", add_help=False)
    t.add_argument("overrides", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_train)
    ft = sub.add_parser("finetune", help="fine-tune a pre-trained run (parent=<run dir or id>), as "
                        "python -m mixer_scaling.finetune", add_help=False)
    ft.add_argument("overrides", nargs=argparse.REMAINDER)
    ft.set_defaults(fn=cmd_finetune)
    da = sub.add_parser("data", help="data tools: pack an ImageFolder tree or CIFAR into shards")
    dsub = da.add_subparsers(dest="data_command", required=True)
    pk = dsub.add_parser("pack", help="resized, shuffled webdataset shards + index.json (data=shards data.root=OUT)")
    pk.add_argument("src", help="an ImageFolder tree (train/, val/ class folders) or a folder with torchvision's CIFAR")
    pk.add_argument("out", help="the shard folder (rerun the same command to resume an interrupted pack)")
    pk.add_argument("--image-size", type=int, default=256, help="shorter side of the stored images (default 256)")
    pk.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    pk.add_argument("--seed", type=int, default=0, help="seeds the fixed sample order (default 0)")
    pk.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    pk.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    pk.add_argument("--quiet", action="store_true", help="no progress bar")
    pk.set_defaults(fn=cmd_data_pack)
    ini = sub.add_parser("init", help="write a starter cluster config (partition, account, setup, GPU) into the "
                         "user config directory ($MIXER_SCALING_CONFIG, default ~/.config/mixer-scaling)")
    ini.add_argument("--cluster", default="default", help="its name, chosen by cluster=<name> (default: default, "
                     "used by every command without cluster=)")
    ini.add_argument("--dir", default=None, help="the user config directory (default: $MIXER_SCALING_CONFIG, "
                     "else ~/.config/mixer-scaling)")
    ini.set_defaults(fn=cmd_init)
    from .analysis.cli import register as register_analysis
    from .analysis.weights import register as register_weights
    from .score import register as register_score
    from .sweep_cli import register as register_sweep

    register_sweep(sub)
    register_score(sub)
    register_analysis(sub)
    register_weights(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:  # overrides after options (`sweep launch demo --executor local seed=1`) are still overrides
        if not hasattr(args, "overrides") or any(e.startswith("-") for e in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if getattr(args, "num_classes", 1) < 1:
        print(f"error: --num-classes={args.num_classes} is not allowed; expected an integer >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.fn(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:
        from .engine import Interrupted  # a debug-executor cell stopped by Ctrl-C: checkpointed and recorded

        if isinstance(exc, Interrupted):
            return _interrupted()
        raise


def _interrupted() -> int:
    """Ctrl-C: one line, exit 130. Finished runs are on disk already; running cells checkpoint on the same
    SIGINT (their processes get it too) and resume on a rerun."""
    print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
