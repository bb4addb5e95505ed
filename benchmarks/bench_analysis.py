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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--out", help="figure folder (default: a temp folder, kept and printed)")
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples per fit (default 200, as the CLI)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    from mixer_scaling.analysis import figures, results  # imports (matplotlib, pandas) timed apart
    t_import = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    out_dir = Path(args.out) if args.out else work / "figures"
    try:
        t0 = time.perf_counter()
        records = results.synthetic_records(args.records, seed=0, statuses={"failed": 0.02, "running": 0.01})
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
                                                           n_boot=args.boot))
    finally:
        shutil.rmtree(work / "runs", ignore_errors=True)

    total = sum(w for w, _ in timings.values())
    cpu = sum(c for _, c in timings.values())
    print(f"{args.records} records written in {t_write:.1f} s (not timed); imports {t_import:.1f} s (not timed)")
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
