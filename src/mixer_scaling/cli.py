"""mixer-scaling: the project's command line.

    mixer-scaling models [--json] [--num-classes N]   the model registry with params and GFLOPs
    mixer-scaling demo [overrides...]                 tiny Mixer, ViT and BiT on the embedded data, compared
    mixer-scaling train [overrides...]                one run (same as python -m mixer_scaling.train)
    mixer-scaling sweep launch|status|list <sweep>    a grid of runs on SLURM or here (sweeps/<name>.yaml)
    mixer-scaling collect <runs_dir>... -o results.parquet   one table from run records (or --wandb)
    mixer-scaling figures <results|runs_dir|paper> -o <dir>  the paper's figures from a table

Bad arguments print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import EXIT_USAGE, UserError

DEMO_MODELS = ("mixer/tiny", "vit/tiny", "bit/tiny")
# ~2 minutes per model on 2 CPU cores: 200 steps of 128 images, the same budget for every family.
DEMO_OVERRIDES = ("study=demo", "train.examples_seen=25600", "data.val_size=2000")


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


def cmd_demo(args) -> int:
    """Train one tiny model per family on the embedded data and print how they compare."""
    from rich.table import Table

    from .config import compose
    from .train import run

    console = _console()
    results, t0 = [], time.perf_counter()
    for i, name in enumerate(DEMO_MODELS, 1):
        cfg = compose([f"model={name}", *DEMO_OVERRIDES, *args.overrides])
        console.print(f"[bold]({i}/{len(DEMO_MODELS)}) {name}[/bold]  {cfg.train.examples_seen} examples "
                      f"of {cfg.data.name} at {cfg.data.image_size}x{cfg.data.image_size}")
        results.append(run(cfg))

    table = Table(title="tiny Mixer vs ViT vs BiT on the embedded data (same examples seen)")
    for col in ("model", "params M", "GFLOPs", "val top-1", "5-shot digits", "train img/s", "infer img/s"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for r in results:
        fewshot = r["metrics"].get("fewshot", {}).get("digits", {}).get("5")
        table.add_row(r["model"], f"{r['params'] / 1e6:.2f}", f"{r['flops_per_image'] / 1e9:.3f}",
                      f"{r['metrics']['val_top1']:.3f}", "-" if fewshot is None else f"{fewshot:.3f}",
                      f"{r['train_img_per_s']:.0f}" if r.get("train_img_per_s") else "-",
                      f"{r['throughput']:.0f}")
    console.print(table)
    console.print(f"{len(results)} runs in {time.perf_counter() - t0:.0f} s (rerunning reuses finished runs):")
    for r in results:
        console.print(f"  {r['model']:<12} {Path(r['run_dir']) / 'result.json'}")
    return 0


def cmd_train(args) -> int:
    from .train import main as train_main

    sys.argv = ["mixer_scaling.train", *args.overrides]
    train_main()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixer-scaling", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list the model registry")
    m.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    m.add_argument("--num-classes", type=int, default=1000, help="head size counted in params (default 1000)")
    m.set_defaults(fn=cmd_models)
    d = sub.add_parser("demo", help="train tiny Mixer, ViT and BiT on the embedded data and compare them")
    d.add_argument("overrides", nargs="*", help="Hydra overrides applied to all three runs")
    d.set_defaults(fn=cmd_demo)
    t = sub.add_parser("train", help="one run (Hydra overrides), as python -m mixer_scaling.train", add_help=False)
    t.add_argument("overrides", nargs=argparse.REMAINDER)
    t.set_defaults(fn=cmd_train)
    from .analysis.cli import register as register_analysis
    from .sweep_cli import register as register_sweep

    register_sweep(sub)
    register_analysis(sub)
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


if __name__ == "__main__":
    sys.exit(main())
