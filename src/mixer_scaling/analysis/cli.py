"""The ``collect`` and ``figures`` subcommands.

    mixer-scaling collect <runs_dir>... -o results.parquet|results.csv [--csv results.csv]
    mixer-scaling collect --wandb ENTITY/PROJECT [--group G] -o results.parquet
    mixer-scaling figures <results.parquet|results.csv|runs_dir|paper> -o figures/ [--overlay-paper]
                          [--metric val_top1|fewshot|fewshot_<dataset>_<k>] [--k 5] [--dataset NAME]
                          [--compute flops|device_hours|core_days] [--best-over KEY ...] [--select METRIC]
                          [--wandb [ENTITY/PROJECT]]
    mixer-scaling dashboard ENTITY/PROJECT [--group STUDY] [--title T] [--dry-run FILE]

``figures`` on results also writes ``findings.md`` and ``findings.json`` (:mod:`.findings`) and
``dashboard.html`` (:mod:`.dashboard`: the figures and the table as one interactive page that opens
offline from disk), and prints the findings after the summary; with ``--wandb`` it logs them to one W&B
run as well (:mod:`.wandb_results`). ``dashboard`` builds a W&B report (:mod:`.dashboard_report`). ``--best-over KEY`` (repeatable) keeps, per configuration,
the value of config column KEY whose runs are best on ``--select`` (default ``select_top1``);
without it, configurations that differ in KEY are drawn apart, never averaged (:mod:`.aggregate`).

:func:`register` adds both to the project's argparse subparsers; each sets ``fn`` to a function of
the parsed namespace that returns an exit code. Bad input raises :class:`UserError`, which the
entry point (``mixer-scaling``) prints as ``error: <message>`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..paths import TABLE_SUFFIXES, check_file, check_folder

if TYPE_CHECKING:  # pandas is imported where a command needs it: the CLI parser starts without it
    import pandas as pd

    from .results import Summary

PAPER = "paper"


def cmd_collect(args: argparse.Namespace) -> int:
    """Runs on disk and/or in W&B → one results table (parquet, and CSV on request).

    A record that cannot be used (truncated, not JSON, not an object, no status or model, a ``metrics`` or
    ``config`` that is not an object) is skipped with one line on stderr naming its path and the problem;
    the summary counts them. Duplicate run ids and accuracies outside [0, 1] are dropped with one warning
    line each (:func:`.results.clean_table`). ``-o`` (and ``--csv``) are checked before anything is read:
    ``-o`` ends in ``.parquet`` or ``.csv`` (the format written), ``--csv`` in ``.csv``, and both can be
    written (:mod:`mixer_scaling.paths`). Exit 0 when at least one record was collected.

    Fine-tunes under the runs directories (a staged sweep's second stage, ``mixer-scaling finetune``) are
    joined to their parents (:func:`.results.collect_finetunes`) into a second table beside the first,
    ``<name>_finetuned.<ext>`` (:func:`finetuned_path`), which ``figures`` reads with it.
    """
    import pandas as pd
    from .results import Summary, clean_table, collect, collect_finetunes, collect_wandb, conform, write_table

    if not args.runs_dirs and not args.wandb:
        raise UserError("collect needs a runs directory or --wandb ENTITY/PROJECT")
    if args.group and not args.wandb:
        raise UserError("--group needs --wandb ENTITY/PROJECT")
    check_file(args.output, "collect -o", suffixes=TABLE_SUFFIXES)  # before any work: nothing is read yet
    if args.csv:
        check_file(args.csv, "collect --csv", suffixes=(".csv",))
    tables, lines, warnings = [], [], []
    if args.runs_dirs:
        df, summary = collect(args.runs_dirs, warn=False)
        for path, why in summary.skipped:  # one line each, on stderr; the rest is collected
            print(f"skipped {path}: {why}", file=sys.stderr)
        warnings += summary.warnings
        tables.append(df)
        lines.append(f"{', '.join(map(str, args.runs_dirs))}: {summary.line}")
    if args.wandb:
        wdf = collect_wandb(args.wandb, args.group)
        tables.append(wdf)
        lines.append(f"W&B {args.wandb}{f' (group {args.group})' if args.group else ''}: "
                     f"{Summary.of_table(wdf).line}")
    if len(tables) == 1:
        df = tables[0]
    else:  # conform again: the two sources may carry different config columns, of different kinds
        df, more = clean_table(conform(pd.concat(tables, ignore_index=True)))
        warnings += more
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    for path in write_table(df, args.output, args.csv):
        lines.append(f"wrote {path} ({len(df)} rows, {len(df.columns)} columns)")
    ft = collect_finetunes(args.runs_dirs) if args.runs_dirs else pd.DataFrame()
    if not ft.empty:
        csv = finetuned_path(args.csv) if args.csv else None
        for path in write_table(ft, finetuned_path(args.output), csv):
            lines.append(f"wrote {path} ({len(ft)} fine-tunes joined to their parents)")
    print("\n".join(lines))
    return 0


def finetuned_path(table: str | Path) -> Path:
    """Where the fine-tuned table of a results table is written: ``results.parquet`` →
    ``results_finetuned.parquet``."""
    table = Path(table)
    return table.with_name(f"{table.stem}_finetuned{table.suffix}")


def load_finetunes(source: str) -> pd.DataFrame | None:
    """The fine-tuned table that goes with ``source``: collected from a runs directory, or read from beside
    a results table (:func:`finetuned_path`); None when there is none."""
    from .results import clean_table, collect_finetunes, read_table

    path = Path(source)
    if path.is_dir():
        ft = collect_finetunes([path])
        return ft if not ft.empty else None
    beside = finetuned_path(path)
    return clean_table(read_table(beside))[0] if beside.is_file() else None


def load_source(source: str) -> tuple[pd.DataFrame, Summary]:
    """A results table from a parquet/CSV file or a runs directory, and its status counts."""
    from .results import Summary, clean_table, collect, read_table

    path = Path(source)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as exc:  # a name over 255 bytes
        raise UserError(f"{source} cannot be read ({exc.strerror or exc}); expected a results table, a runs "
                        f"directory or 'paper'") from None
    if is_dir:
        return collect([path], warn=False)
    if not exists:
        raise UserError(f"{source} is neither a results table, a runs directory nor 'paper'")
    df, warnings = clean_table(read_table(path))
    summary = Summary.of_table(df)
    summary.warnings = warnings
    return df, summary


def cmd_figures(args: argparse.Namespace) -> int:
    """Results (or the paper's tables) → figures, their CSVs, fits.csv and (for results) findings.md and
    findings.json in one folder; prints the files, the summary and the findings."""
    from . import figures  # matplotlib only when drawing

    check_folder(args.output, "figures -o", beside=True)  # before any work: a bad folder fails now, not at the end
    target = None
    if args.wandb is not None:  # checked before any work too
        from .wandb_results import parse_target

        if args.source == PAPER and not Path(args.source).exists():
            raise UserError("figures paper --wandb: --wandb logs your results table; give a results table or runs "
                            "directory")
        target = parse_target(args.wandb)
    common = dict(n_boot=args.boot, seed=args.seed)
    if args.source == PAPER and not Path(args.source).exists():
        if args.overlay_paper:
            raise UserError("--overlay-paper draws your runs beside the paper's; "
                            "give a results table or runs directory")
        if args.best_over or args.select:
            raise UserError(f"--{'best-over' if args.best_over else 'select'} chooses among your runs' configurations; "
                            "the paper's tables have one row per model (give a results table or runs directory)")
        out = figures.render_paper(args.output, metric=args.metric, compute=args.compute or "core_days", **common)
    else:
        df, summary = load_source(args.source)
        for path, why in summary.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        for line in summary.warnings:
            print(f"warning: {line}", file=sys.stderr)
        out = figures.render(df, args.output, metric=args.metric, k=args.k, dataset=args.dataset,
                             compute=args.compute or "flops", overlay_paper=args.overlay_paper,
                             summary=summary, best_over=args.best_over or (), select=args.select,
                             finetunes=load_finetunes(args.source), **common)
        if "permutation" in df.columns and df.loc[df.status == "done", "permutation"].nunique() > 1:
            from .permutation import render_permutation  # Fig. 4, when the runs vary data.permutation

            out.files.extend(render_permutation(df, args.output, metric=args.metric))
    wandb_line = None
    if target is not None:  # after the figures are written: W&B failing never loses them
        from .wandb_results import describe, log_results

        info = log_results(df, out.files, entity=target[0], project=target[1], out_dir=out.out_dir,
                           source=args.source)
        wandb_line = describe(info, *target)
    print(f"figures in {out.out_dir}:")
    for f in out.files:
        print(f"  {f}")
    print("\n".join(out.summary))
    if wandb_line:
        print(wandb_line)
    if out.findings is not None:
        print()
        print(out.findings.markdown(), end="")
    return 0


def register(subparsers) -> None:
    """Add ``collect``, ``figures`` and ``dashboard`` (:mod:`.dashboard_report`) to an argparse subparsers object."""
    from .dashboard_report import register as register_dashboard  # wandb-workspaces only when it runs
    c = subparsers.add_parser("collect", help="read every result.json (or a W&B project) into one results table",
                              description="Read every result.json under the given runs directories (recursively), "
                                          "or a W&B project's run summaries, into one table, one row per run.")
    c.add_argument("runs_dirs", nargs="*", metavar="runs_dir", help="directories searched for result.json")
    c.add_argument("-o", "--output", default="results.parquet",
                   help="table to write: parquet for a .parquet name, CSV for .csv (default results.parquet)")
    c.add_argument("--csv", help="also write the table as CSV here (a .csv name)")
    c.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from this W&B project (summaries only)")
    c.add_argument("--group", help="with --wandb: only runs of this W&B group (the study)")
    c.set_defaults(fn=cmd_collect)

    f = subparsers.add_parser("figures", help="draw the paper's figures from results (or from the paper's tables)",
                              description="Pareto frontiers (accuracy vs compute, vs throughput), data scaling and "
                                          "power-law fits as PNG, PDF and CSV; 'paper' draws the paper's Tables 2-3.")
    f.add_argument("source", help="results .parquet/.csv, a runs directory, or 'paper'")
    f.add_argument("-o", "--output", required=True, help="folder for the figures (created; files replaced)")
    f.add_argument("--overlay-paper", action="store_true", help="also draw your points beside the paper's Table 3")
    f.add_argument("--metric", help="val_top1 (Pareto default), fewshot (data-scaling default), "
                                    "a fewshot_<dataset>_<k> column; for the paper: val_top1, real_top1, avg5")
    f.add_argument("--k", type=int, help="shots for --metric fewshot (default 5)")
    f.add_argument("--dataset", help="few-shot data set (default: the first in the table)")
    f.add_argument("--compute", choices=("flops", "device_hours", "core_days"),
                   help="compute axis: flops (default for runs) or device_hours; core_days for the paper")
    f.add_argument("--best-over", action="append", metavar="KEY",
                   help="a config column (e.g. train.lr) to choose per configuration instead of drawing each value: "
                        "the value whose runs are best on --select is kept (repeatable)")
    f.add_argument("--select", metavar="METRIC",
                   help="what --best-over chooses on: select_top1 (default; upstream top-1 on the held-out selection "
                        "half of validation), or val_top1 / a few-shot column not used by the reported metric")
    f.add_argument("--boot", type=int, default=200,
                   help="bootstrap resamples per fit and for the findings' intervals (default 200)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    f.add_argument("--wandb", nargs="?", const="", metavar="ENTITY/PROJECT",
                   help="also log the results table, every figure and dashboard.html to one W&B run (job type "
                        "analysis, group = the table's study); alone: the study's W&B settings (conf/wandb)")
    f.set_defaults(fn=cmd_figures)

    register_dashboard(subparsers)
