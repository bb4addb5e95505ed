"""Every benchmark, one table: ``make bench`` (= ``.venv/bin/python benchmarks/run.py``).

    .venv/bin/python benchmarks/run.py [--quick] [--only train,dispatch] [--out benchmarks/results] [--no-save]

Runs the benchmark modules in order (each also runs alone: ``python benchmarks/bench_<name>.py``),
shows their progress, prints one table (every figure beside its goal; where a goal is missed, why and
what would close it) and writes it to ``benchmarks/results/``: ``latest.csv``, ``latest.md``,
``latest.json`` (rows, extra data and machine info), ``latest.png`` (each figure against its goal, and
cost against resolution), plus dated copies ``<YYYY-MM-DD>-<cpu|gpu>.{csv,md}``. Benchmarks measure:
this exits 0 whether goals are met or not (1 only for a bad command line).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIELDS, RESULTS, machine_info, parse_goal, row  # noqa: E402

# (key for --only, module, what it measures) in the order they run: the timing-sensitive ones first.
BENCHMARKS = [
    ("train", "bench_train", "1-2 training step vs timm, MFU"),
    ("precision", "bench_precision", "8 training step bf16 vs fp32 (CPU)"),
    ("inference", "bench_inference", "3 inference throughput Mixer/ViT/BiT"),
    ("resolution", "bench_resolution", "4 cost vs resolution"),
    ("dispatch", "bench_dispatch", "5 SLURM dispatch of 1000 cells"),
    ("analysis", "bench_analysis", "6 collect + figures, 10,000 records"),
    ("startup", "bench_startup", "7 process start to first step"),
    ("data", "bench_data", "7 data generation vs training"),
    ("shards", "bench_shards", "9 shard decoding per core vs a GPU's rate"),
]

# Why a goal is missed and what would close it, shown beside a missed row (keyed by benchmark name). From the
# profiles and A/B measurements described in benchmarks/README.md; rerun ab_mixer.py / the profiles to update.
WHY_MISSED = {
    "1 train step: ours/timm": (
        "both models spend most of the step (fp32 profile: S/16 ~80%, tiny ~55%) in the same matrix products; "
        "ours drops what timm does around them (token-mixing transposes and their copies, a pass per residual add, "
        "~4-6% of the step). The rest (LayerNorm, exact GELU and their backward, bias gradients, AdamW) is the "
        "same memory-bound work in both. Closing it needs that work fused into fewer passes: a fused "
        "bias+GELU / LayerNorm kernel (torch.compile did not speed up the CPU step here: 0.93x, 37 s to "
        "compile), or a GPU, where the elementwise share is larger and fusion pays."),
    "2 MFU (train FLOP/s / mm peak)": (
        "tiny's matrices are small (C=128, D_S=64): ~45% of its step (profiled in fp32) is outside the matrix "
        "products (LayerNorm, GELU, bias and residual passes over 16 MB activations, AdamW), all memory-bound; "
        "S/16 reaches ~0.8 in fp32. In bf16 on an AMX CPU the peak (a bf16 mm) is several times the fp32 one "
        "while that memory-bound work, the casts to and from bf16 and the fp32 AdamW are not faster, so the "
        "same step is a smaller fraction of it (the note gives it against the fp32 peak too). Closing it needs "
        "fused elementwise kernels, or wider models / larger batches."),
    "8 train step: bf16/fp32 (CPU)": (
        "bf16 autocast speeds up the matrix products (AMX) but adds a cast of every weight and of the "
        "activations around each product, and leaves the rest as it was: LayerNorm, GELU, softmax, "
        "normalisation layers, the fp32 AdamW and gradient clipping. For models whose step is mostly that "
        "(small widths, few tokens) the casts can cost more than the products save. Closing it: profile the "
        "slower family's bf16 step (torch.profiler) for the cast and elementwise share; where bf16 stays "
        "slower, that family's CPU runs should use train.precision=fp32 (or auto should choose per model)."),
    "5 dispatch (SLURM)": (
        "what is left is Python work proportional to the grid: composing and validating 1000 cells (~2 ms "
        "each, was ~150), reading 1000 records and metrics files for their states, plus ~2 s of interpreter "
        "start and torch import; timm is no longer imported on this path, and done cells no longer get a "
        "resources preset (which built the model to count its FLOPs). Closing it: cache each cell's "
        "validated config beside its record (a relaunch then reads instead of composing), and gc.freeze() "
        "before exit (~1 s of final garbage collection over the heap)."),
    "7 start to first step": (
        "imports are ~4 of the 5 s: torch ~1.2, timm ~1.9 (torchvision -> torch._dynamo ~1.2 of it; a run "
        "needs timm's optimizer and scheduler factories), scikit-learn ~0.9 (the digits few-shot set, built "
        "before training so that a bad few-shot config fails before anything is written), wandb ~0.3 "
        "(imported by timm even with W&B disabled). Closing it: load the few-shot pixels after training "
        "while checking their config before, and import scikit-learn lazily."),
}


def run_all(only: list[str] | None, quick: bool, console) -> tuple[list[dict], dict[str, float]]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    todo = [b for b in BENCHMARKS if not only or b[0] in only]
    rows: list[dict] = []
    seconds: dict[str, float] = {}
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console,
                  transient=False) as bar:
        task = bar.add_task("benchmarks", total=len(todo))
        for key, module, what in todo:
            bar.update(task, description=what)
            t0 = time.perf_counter()
            try:
                mod = importlib.import_module(module)
                got = mod.run(quick=quick)
            except Exception as exc:  # a benchmark that breaks is reported, the others still run
                traceback.print_exc()
                got = [row(what, "(benchmark failed)", None, "", "", f"{type(exc).__name__}: {exc}")]
            seconds[key] = time.perf_counter() - t0
            for r in got:
                if r["met"] is False and r["benchmark"] in WHY_MISSED:
                    r["why"] = WHY_MISSED[r["benchmark"]]
            rows += got
            bar.console.print(f"  {what}: {seconds[key]:.0f} s, " +
                              ", ".join(_fmt(r["value"]) + (f" {r['unit']}" if r["unit"] else "") for r in got))
            bar.advance(task)
    return rows, seconds


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _met(m) -> str:
    return {True: "met", False: "MISSED", None: ""}[m]


def print_table(rows: list[dict], console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for col, just in (("benchmark", "left"), ("metric", "left"), ("value", "right"), ("unit", "left"),
                      ("goal", "left"), ("met", "left"), ("note", "left")):
        table.add_column(col, justify=just, overflow="fold")
    for r in rows:
        met = {True: "[green]met[/]", False: "[red]MISSED[/]", None: ""}[r["met"]]
        note = r["note"] + (f" [dim]| why missed: {r['why']}[/]" if r.get("why") else "")
        table.add_row(r["benchmark"], r["metric"], _fmt(r["value"]), r["unit"], r["goal"], met, note)
    console.print(table)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*FIELDS, "why"], extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": "" if r["value"] is None else f"{r['value']:.6g}",
                        "met": "" if r["met"] is None else str(r["met"]).lower(), "why": r.get("why", "")})


def markdown(rows: list[dict], info: dict, seconds: dict[str, float], total: float) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# Benchmarks, {info['date']} ({'GPU ' + info['gpu'] if info['gpu'] != 'none' else 'CPU'})", "",
             f"Machine: {info['cpu']} ({info['cpu_flags']}), {info['cores']} cores, {info['threads']} torch threads; "
             f"GPU: {info['gpu']}; Python {info['python']}, torch {info['torch']}, timm {info['timm']}; "
             f"git {info['git']}; 1-min load average at the start {info.get('load_avg_1min', '?')}.", "",
             f"`make bench` wall time: {total / 60:.1f} min (" +
             ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ").", "",
             "| benchmark | metric | value | unit | goal | met | note |", "|---|---|--:|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(x) for x in (r["benchmark"], r["metric"], _fmt(r["value"]), r["unit"],
                                                           r["goal"], _met(r["met"]), r["note"])) + " |")
    missed = [r for r in rows if r["met"] is False]
    if missed:
        lines += ["", "## Missed goals: why, and what would close them", ""]
        seen = set()
        for r in missed:
            if r["benchmark"] in seen:
                continue
            seen.add(r["benchmark"])
            which = ", ".join(x["metric"] for x in missed if x["benchmark"] == r["benchmark"])
            lines.append(f"- **{r['benchmark']}** ({which}): {r.get('why', 'see benchmarks/README.md')}")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colour = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    higher = [r for r in rows if r["value"] is not None and r["unit"] in ("x", "") and "exponent" not in r["metric"]
              and (parse_goal(r["goal"]) or r["goal"].startswith("~"))]
    lower = [r for r in rows if r["value"] is not None and r["unit"] == "s"]
    curve = [r["extra"] for r in rows if isinstance(r.get("extra"), dict) and "tokens" in r["extra"]
             and r["extra"].get("device") == "cpu"]
    fig, axes = plt.subplots(1, 3, figsize=(21, max(4.5, 0.45 * max(len(higher), len(lower)) + 1.5)),
                             gridspec_kw={"width_ratios": [1.3, 1.1, 1.0]})

    def bars(ax, rs, xlabel):
        labels = [f"{r['benchmark'].split(':')[0].split(' (')[0]} | {r['metric'][:44]}" for r in rs]
        ys = range(len(rs))
        ax.barh(list(ys), [r["value"] for r in rs], color=[colour[r["met"]] for r in rs], alpha=0.8)
        for y, r in zip(ys, rs):
            g = parse_goal(r["goal"])
            target = g[1] if g else float(r["goal"].lstrip("~").split()[0])
            ax.plot([target, target], [y - 0.4, y + 0.4], color="black", lw=2, ls="-" if g else ":")
            ax.text(r["value"], y, f" {_fmt(r['value'])}", va="center", fontsize=8)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)

    if higher:
        bars(axes[0], higher, "ratio (higher is better); black: goal, dotted: paper")
        axes[0].set_xscale("log")
        axes[0].set_title("ratios against their goals")
    if lower:
        bars(axes[1], lower, "seconds (lower is better); black: goal")
        axes[1].set_title("wall times against their goals")
    ax = axes[2]
    if curve:
        curve = sorted(curve, key=lambda e: e["tokens"])
        t = [e["tokens"] for e in curve]
        for key, label, c in (("mixer", "Mixer-B/16", "tab:blue"), ("vit", "ViT-B/16", "tab:orange")):
            s = [e[f"{key}_s_per_img"] for e in curve]
            ax.plot(t, s, "o-", color=c, label=f"{label} measured")
            f = [e[f"{key}_flops"] for e in curve]
            ax.plot(t, [s[0] * x / f[0] for x in f], ":", color=c, label=f"{label} FLOPs (scaled)")
        ax.plot(t, [curve[0]["mixer_s_per_img"] * x / t[0] for x in t], color="gray", lw=0.8, label="linear")
        ax.plot(t, [curve[0]["vit_s_per_img"] * (x / t[0]) ** 2 for x in t], color="gray", lw=0.8, ls="--",
                label="quadratic")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(t, [f"{x}\n{e['size']}px" for x, e in zip(t, curve)], fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("tokens per image (patch 16)")
        ax.set_ylabel(f"seconds per image (CPU, {curve[0].get('precision', 'fp32')})")
        ax.legend(fontsize=7)
        ax.set_title("cost as images grow")
    else:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (for development; not for results)")
    p.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(b[0] for b in BENCHMARKS))
    p.add_argument("--out", default=str(RESULTS), help="where the results go (default benchmarks/results)")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in {b[0] for b in BENCHMARKS}]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(b[0] for b in BENCHMARKS)}")

    from rich.console import Console

    console = Console(width=max(Console().width, 160))
    info = machine_info()
    console.print(f"[bold]benchmarks[/] on {info['cpu']}, {info['cores']} cores ({info['threads']} threads), "
                  f"GPU {info['gpu']}; torch {info['torch']}, timm {info['timm']}; load {info.get('load_avg_1min')}")
    t0 = time.perf_counter()
    rows, seconds = run_all(only, args.quick, console)
    total = time.perf_counter() - t0
    title = (f"mixer-scaling benchmarks {info['date']}: {info['cpu']} x{info['threads']} threads, GPU {info['gpu']}, "
             f"torch {info['torch']}, timm {info['timm']}{' (QUICK)' if args.quick else ''}; {total / 60:.1f} min")
    print_table(rows, console, title)
    missed = sum(r["met"] is False for r in rows)
    console.print(f"{sum(r['met'] is True for r in rows)} goals met, {missed} missed, "
                  f"{sum(r['met'] is None for r in rows)} figures without a goal; {total / 60:.1f} min")
    if args.no_save:
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{info['date']}-{'gpu' if info['gpu'] != 'none' else 'cpu'}{'-quick' if args.quick else ''}"
    md = markdown(rows, info, seconds, total)
    for stem in ("latest", tag):
        write_csv(rows, out / f"{stem}.csv")
        (out / f"{stem}.md").write_text(md)
    (out / "latest.json").write_text(json.dumps({"machine": info, "seconds": seconds, "total_s": total,
                                                  "quick": args.quick, "rows": rows}, indent=1, default=str) + "\n")
    try:
        figure(rows, out / "latest.png", title)
    except Exception as exc:  # the numbers are written; a figure problem is reported, not fatal
        console.print(f"[yellow]figure not drawn: {type(exc).__name__}: {exc}[/]")
    console.print(f"written: {out}/latest.{{csv,md,json,png}}, {out}/{tag}.{{csv,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
