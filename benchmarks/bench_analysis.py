"""Benchmark: ``collect`` + every figure from 10,000 synthetic run records (goal: ≤ 10 s in all).

    python benchmarks/bench_analysis.py [--records 10000] [--out DIR] [--boot 200]

Writes the records as ``<tmp>/runs/<run_id>/result.json`` (not timed), then times collect (reading
and parsing every record into the table), the parquet write, and rendering the figures (Pareto
compute and throughput, data scaling with bootstrap fits, both paper overlays; PNG + PDF + CSV).
Prints the timings and the figure paths. A plain script, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 10.0


def measure(n_records: int = 10_000, out: str | None = None, boot: int = 200, keep_figures: bool = True) -> dict:
    """Times collect, the parquet write and the figures; returns the timings and what was drawn."""
    t0 = time.perf_counter()
    from mixer_scaling.analysis import figures, results  # imports (matplotlib, pandas) timed apart
    t_import = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    out_dir = Path(out) if out else work / "figures"
    try:
        t0 = time.perf_counter()
        records = results.synthetic_records(n_records, seed=0, statuses={"failed": 0.02, "running": 0.01})
        results.write_records(records, work / "runs")
        t_write = time.perf_counter() - t0

        timings = {}  # name: (wall s, CPU s of this process)

        def timed(name, fn):
            w, c = time.perf_counter(), time.process_time()
            out = fn()
            timings[name] = (time.perf_counter() - w, time.process_time() - c)
            return out

        df, summary = timed("collect", lambda: results.collect(work / "runs"))
        timed("write parquet", lambda: results.write_table(df, work / "results.parquet"))
        rendered = timed("figures", lambda: figures.render(df, out_dir, overlay_paper=True, summary=summary,
                                                           n_boot=boot))
    finally:
        shutil.rmtree(work / "runs", ignore_errors=True)
        if not keep_figures:
            shutil.rmtree(work, ignore_errors=True)
    return {"timings": timings, "t_write": t_write, "t_import": t_import, "summary": summary, "rendered": rendered}


def run(quick: bool = False) -> list[dict]:
    """Rows for benchmarks/run.py: the total against the goal (always the full 10,000 records)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import row

    runs = [measure(10_000, keep_figures=False) for _ in range(1 if quick else 3)]
    totals = [sum(w for w, _ in m["timings"].values()) for m in runs]
    m = runs[sorted(range(len(runs)), key=totals.__getitem__)[len(runs) // 2]]  # the median run
    total = sum(w for w, _ in m["timings"].values())
    cpu = sum(c for _, c in m["timings"].values())
    parts = ", ".join(f"{name} {wall:.1f}" for name, (wall, _) in m["timings"].items())
    return [row("6 collect + figures", "10,000 run records → table + every figure, s", total, f"<= {GOAL_S:g}", "s",
                f"median of {len(runs)} ({', '.join(f'{t:.1f}' for t in totals)}): {parts} s; CPU {cpu:.1f} s; "
                f"{len(m['rendered'].files)} files (PNG, PDF, CSV)")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--out", help="figure folder (default: a temp folder, kept and printed)")
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples per fit (default 200, as the CLI)")
    args = p.parse_args(argv)

    m = measure(args.records, args.out, args.boot)
    timings, summary, rendered = m["timings"], m["summary"], m["rendered"]
    total = sum(w for w, _ in timings.values())
    cpu = sum(c for _, c in timings.values())
    print(f"{args.records} records written in {m['t_write']:.1f} s (not timed); imports {m['t_import']:.1f} s "
          f"(not timed)")
    print(summary.line)
    print(f"  {'':<14} {'wall':>7} {'CPU':>7}")
    for name, (wall, c) in timings.items():
        print(f"  {name:<14} {wall:6.2f}s {c:6.2f}s")
    print(f"  {'total':<14} {total:6.2f}s {cpu:6.2f}s  (goal ≤ {GOAL_S:.0f} s wall: "
          f"{'met' if total <= GOAL_S else 'MISSED'}; CPU time is what a busy machine does not inflate)")
    print("figures:")
    for f in rendered.files:
        print(f"  {f}")
    print("\n".join(rendered.summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
