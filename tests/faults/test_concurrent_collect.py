"""`collect` while runs rewrite their records never reads a partial record; bad records are skipped and counted.

A writer process rewrites N large ``result.json`` records (~300 KB each) over and over through the
framework's own writer (``records.Record.save``: temp file, fsync, rename) while this process runs the
real ``collect`` in a loop. Every record carries its generation three times, at its start
(``examples_seen``), in its middle (``study``) and at its end (``throughput``, keys are sorted), so a
record read half old, half new shows up as a mismatch, and a cut one as a skipped record.

Two negative controls prove the check can fail: the same records written in place in chunks (open,
write, flush, write, ...) are seen cut (collect skips and counts them), and written over the old bytes
without truncating, seen torn (valid JSON, mixed generations).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mixer_scaling import cli
from mixer_scaling.analysis.results import collect

N_RUNS = 50
PAD = 300_000  # bytes of padding per record: a non-atomic write of it takes many syscalls

WRITER = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    from mixer_scaling.records import Record

    runs, mode, n, pad, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    BASE = 10 ** 8  # generations keep their width, so every version of a record has the same length

    def fields(i, gen):
        return {"run_id": f"run{i:03d}", "status": "done", "model": "mixer/b16", "family": "mixer",
                "size": "b16", "patch": 16, "fraction": 1.0, "seed": i, "study": f"gen{gen:09d}",
                "examples_seen": gen, "throughput": float(gen), "metrics": {"val_top1": 0.5},
                "pad": "x" * pad, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # as Record.save

    def write(i, gen):
        run_dir = runs / f"run{i:03d}"
        if mode == "atomic":  # the framework's writer, as a run saves its record
            Record(run_dir, fields(i, gen)).save("done")
            return
        data = (json.dumps(fields(i, gen), indent=2, sort_keys=True) + "\\n").encode()
        with open(run_dir / "result.json", "wb" if mode == "truncate" else "r+b") as f:
            for k in range(0, len(data), 16384):  # a naive writer: in place, chunk by chunk
                f.write(data[k:k + 16384])
                f.flush()

    for i in range(n):
        (runs / f"run{i:03d}").mkdir(parents=True, exist_ok=True)
        Record(runs / f"run{i:03d}", fields(i, BASE)).save("done")
    (runs.parent / "ready").touch()
    gen, end = BASE, time.monotonic() + seconds
    while time.monotonic() < end and not (runs.parent / "stop").exists():
        gen += 1
        for i in range(n):
            write(i, gen)
    print(gen - BASE)
''')


def start_writer(tmp: Path, mode: str, seconds: float) -> tuple[subprocess.Popen, Path]:
    runs = tmp / "runs"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(runs), mode, str(N_RUNS), str(PAD), str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp / "ready").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "writer did not start"
        time.sleep(0.02)
    return proc, runs


def stop_writer(tmp: Path, proc: subprocess.Popen) -> int:
    (tmp / "stop").touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return int(out.strip())


def torn(df) -> int:
    """Rows whose generation differs between the start, middle and end of their record."""
    gens_mid = df["study"].str.removeprefix("gen").astype(int)
    return int(((df["examples_seen"] != df["throughput"]) | (df["examples_seen"] != gens_mid)).sum())


def test_collect_never_reads_a_partial_record_while_runs_write(tmp_path):
    proc, runs = start_writer(tmp_path, "atomic", seconds=60)
    collects, generations = 0, set()
    try:
        end = time.monotonic() + 3.0
        while time.monotonic() < end or collects < 5:
            df, summary = collect(runs)  # raises on a missing or unreadable root; never here
            collects += 1
            assert summary.skipped == [], summary.skipped[:3]
            assert len(df) == N_RUNS and summary.done == N_RUNS
            assert torn(df) == 0
            generations.update(df["examples_seen"].tolist())
    finally:
        rounds = stop_writer(tmp_path, proc)
    assert rounds >= 2 and len(generations) >= 2, (rounds, generations)  # the records really changed meanwhile


@pytest.mark.parametrize("mode, seen", [("truncate", "skipped"), ("inplace", "torn")])
def test_the_check_catches_a_naive_writer(tmp_path, mode, seen):
    """Negative controls: without the temp-file-and-rename, readers see cut records (skipped and counted
    by collect, the rest collected) or torn ones (the generation check above would fail)."""
    proc, runs = start_writer(tmp_path, mode, seconds=60)
    bad, reasons, collects = 0, set(), 0
    try:
        end = time.monotonic() + 15.0
        while not bad and time.monotonic() < end:
            df, summary = collect(runs, warn=False)
            collects += 1
            assert len(df) + len(summary.skipped) == N_RUNS  # every record is either a row or counted
            if seen == "skipped":
                bad += len(summary.skipped)
                reasons.update(why.split(" at ")[0] for _, why in summary.skipped)
            else:
                bad += torn(df)
    finally:
        stop_writer(tmp_path, proc)
    assert bad > 0, f"{collects} collects never saw a {seen} record"
    if seen == "skipped":
        assert reasons <= {"empty file", "invalid JSON"}, reasons


# ---------------------------------------------------------------------------------------------
# collect skips bad records, says so once each, and collects the rest
# ---------------------------------------------------------------------------------------------


def good(run_id: str, seed: int) -> dict:
    return {"run_id": run_id, "status": "done", "model": "mixer/tiny", "family": "mixer", "fraction": 1.0,
            "seed": seed, "examples_seen": 1024, "metrics": {"val_top1": 0.5}}


def test_collect_cli_skips_bad_records_with_one_line_each(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    files = {
        "ok1": json.dumps(good("ok1", 0), indent=2),
        "ok2": json.dumps(good("ok2", 1)),
        "cut": json.dumps(good("cut", 2), indent=2)[:70],
        "empty": "",
        "list": "[1, 2, 3]",
        "nomodel": json.dumps({**good("nomodel", 3), "model": None}),
        "nostatus": json.dumps({k: v for k, v in good("nostatus", 4).items() if k != "status"}),
        "latin1": None,
    }
    for name, text in files.items():
        (runs / name).mkdir(parents=True)
        path = runs / name / "result.json"
        path.write_bytes(b'{"status": "done", "model": "caf\xe9"}' if text is None else text.encode())
    monkeypatch.chdir(tmp_path)
    code = cli.main(["collect", str(runs), "-o", str(tmp_path / "results.parquet")])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = err.strip().splitlines()
    why = {Path(line.split(": ", 1)[0].removeprefix("skipped ")).parent.name: line.split(": ", 1)[1] for line in lines}
    assert all(line.startswith(f"skipped {runs}/") for line in lines) and len(lines) == 6, err
    assert why["cut"].startswith("invalid JSON at line ") and "truncated or damaged" in why["cut"]
    assert why["empty"] == "empty file"
    assert why["list"] == "a JSON list, not a record object"
    assert why["nomodel"] == "missing required field model"
    assert why["nostatus"] == "missing required field status"
    assert why["latin1"].startswith("not a JSON text (UnicodeDecodeError")
    assert "8 runs: 2 done, 0 failed, 0 running/interrupted, 6 unreadable records skipped" in out
    import pandas as pd

    assert sorted(pd.read_parquet(tmp_path / "results.parquet")["run_id"]) == ["ok1", "ok2"]
