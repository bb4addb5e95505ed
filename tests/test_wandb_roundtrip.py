"""W&B round trip: what a run gives the real W&B client (offline) rebuilds the same results-table row as
its ``result.json``; the flat comparison keys are in the config from the run's first record.

Nothing on the writing side is mocked: one tiny run trains with ``wandb.mode=offline``, and the test reads
back W&B's own offline transaction log (``run-<id>.wandb``, the file ``wandb sync`` uploads), record by
record. That file is LevelDB's log format (32 KiB blocks of chunks: CRC32, length, type) after a 7-byte
header, each record a ``wandb_internal_pb2.Record`` protobuf; W&B 0.31 has no Python reader for it any
more (its service is Go), so the few lines below read the format.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY
from mixer_scaling import records
from mixer_scaling import columns
from mixer_scaling.analysis.results import row_from_record, row_from_wandb
from mixer_scaling.config import compose
from mixer_scaling.train import run

pytestmark = pytest.mark.slow

_FILE_HEADER = 7  # ":W&B", 0xBEE1, version
_BLOCK = 32768
_CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def transaction_log(path: Path) -> list:
    """The W&B records of an offline run's transaction log, in the order they were written."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, pos, parts = [], _FILE_HEADER, []
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        chunk = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == 0 and length == 0:  # zero-filled tail
            continue
        parts.append(chunk)
        if kind in (_FULL, _LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def _items(items) -> dict:
    """Config/summary items → {key: value}: nested keys joined into nested dicts, values from JSON."""
    out: dict = {}
    for item in items:
        path = list(item.nested_key) or [item.key]
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One tiny Mixer run logged to W&B offline; its record and its W&B transaction log's records."""


    tmp = tmp_path_factory.mktemp("wandb-roundtrip")
    overrides = [*TINY, f"runs_dir={tmp / 'runs'}", "model=mixer/micro", "data.image_size=16",
                 "train.eval_every_examples=512", "wandb.mode=offline", "study=roundtrip"]
    rec = run(compose(overrides))
    assert rec["wandb"]["mode"] == "offline" and not rec.get("events"), rec.get("events")
    run_dir = Path(rec["run_dir"])
    logs = list((run_dir / "wandb").glob(f"offline-run-*-{rec['run_id']}/run-{rec['run_id']}.wandb"))
    assert len(logs) == 1, logs
    return rec, run_dir, transaction_log(logs[0])


def _given(log: list) -> tuple[dict, dict, str]:
    """The config (init's, then later updates) and the summary (every update, in order) the run gave W&B,
    and its group."""
    config, summary, group = {}, {}, None
    for rec in log:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            config.update(_items(rec.run.config.update))
            group = rec.run.run_group
        elif kind == "config":
            config.update(_items(rec.config.update))
        elif kind == "summary":
            summary.update(_items(rec.summary.update))
    return config, summary, group


def _same(a, b) -> bool:
    missing = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if missing(a) or missing(b):
        return missing(a) and missing(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    return a == b


def test_the_wandb_summary_and_config_rebuild_the_records_row(offline_run):
    rec, run_dir, log = offline_run
    config, summary, group = _given(log)
    wandb_run = SimpleNamespace(id=rec["run_id"], config=config, summary_metrics=summary, state="finished",
                                group=group, url=None)
    from_wandb = row_from_wandb(wandb_run)
    from_record = row_from_record(records.read_record(run_dir), run_dir)

    # every column but where it was read from: the same value from either source
    shared = (set(from_record) | set(from_wandb)) - {"run_dir"}
    differ = {c: (from_record.get(c), from_wandb.get(c)) for c in sorted(shared)
              if not _same(from_record.get(c), from_wandb.get(c))}
    assert not differ, differ
    assert set(columns.COLUMNS) - {"run_dir"} <= shared
    assert any(columns.parse_fewshot_column(c) for c in shared)  # few-shot columns made the trip too
    assert from_record["status"] == "done" and from_record["val_top1"] > 0
    assert not any(c.startswith(("config.family", "config.model_name", "config.pretrain_flops")) for c in from_wandb)


def test_the_comparison_keys_are_in_the_config_from_the_first_record(offline_run):
    rec, _, log = offline_run
    kinds = [r.WhichOneof("record_type") for r in log]
    first_history = kinds.index("history")
    first_run = kinds.index("run")
    assert first_run < first_history
    at_init = _items(log[first_run].run.config.update)
    expected = {"family": rec["family"], "model_name": rec["model"], "size": rec["size"], "patch": rec["patch"],
                "fraction": rec["fraction"], "train_size": rec["train_size"], "examples_seen": rec["examples_seen"],
                "params": rec["params"], "flops_per_image": rec["flops_per_image"],
                "pretrain_flops": rec["train_flops"], "seed": rec["seed"], "study": "roundtrip"}
    assert {k: at_init.get(k) for k in expected} == expected
    # the nested resolved config is there too, its model group untouched by the flat keys
    assert at_init["model"]["name"] == "mixer/micro" and at_init["train"]["examples_seen"] == rec["examples_seen"]


def test_curves_are_drawn_against_examples_and_flops_with_best_and_last_summaries(offline_run):
    rec, run_dir, log = offline_run
    metrics = {r.metric.name or r.metric.glob_name: r.metric for r in log if r.WhichOneof("record_type") == "metric"}
    for name in ("train/loss", "val/select_top1", "train/*", "val/*"):
        assert metrics[name].step_metric == columns.EXAMPLES, name
    assert metrics["val/select_top1"].summary.max and metrics["train/loss"].summary.last
    assert {columns.EXAMPLES, columns.FLOPS} <= set(metrics)

    # every metrics.jsonl row is a W&B history row with the same keys (less step) plus flops
    lines = records.MetricsLog(run_dir).read()
    history = []
    for r in log:
        if r.WhichOneof("record_type") == "history":
            row = {}
            for item in r.history.item:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json) if item.value_json else getattr(item, item.WhichOneof("value"))
            history.append(row)
    by_step = {}
    for row in history:
        by_step.setdefault(row["_step"], {}).update(row)
    for line in lines:
        logged = by_step[line["step"]]
        for key, value in line.items():
            if key != "step":
                assert _same(logged[key], value), (line["step"], key)
        assert _same(logged[columns.FLOPS], 3.0 * rec["flops_per_image"] * line["examples"])
    assert any("val/select_top1" in line for line in lines)
