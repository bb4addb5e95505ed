"""W&B unreachable: the real client, online, pointed at a closed local port, or at a port that accepts
the connection and never answers (init times out). The run must finish with its complete local record,
say once that W&B was unavailable, and keep its metrics in W&B's offline files for ``wandb sync``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fault_helpers import QUICK
from mixer_scaling import records
from mixer_scaling.config import compose
from mixer_scaling.train import run


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port  # nothing listens there any more: connections are refused


@pytest.fixture
def silent_port():
    with socket.socket() as s:  # the kernel completes the handshake; nobody ever reads or answers
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.mark.parametrize("server", ["closed_port", "silent_port"])
def test_unreachable_wandb_falls_back_to_offline_and_the_record_is_complete(tmp_path, monkeypatch, caplog,
                                                                           request, server):
    port = request.getfixturevalue(server)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose([*QUICK, f"runs_dir={tmp_path / 'runs'}", "wandb.mode=online", "wandb.init_timeout=3"])
    with caplog.at_level("WARNING"):
        rec = run(cfg)

    assert rec["status"] == "done" and rec["metrics"]["val_top1"] is not None and rec["metrics"]["fewshot"]
    assert rec["wandb"]["mode"] == "offline (online unavailable)" and rec["wandb"]["id"] == rec["run_id"]
    said = [e["message"] for e in rec["events"]]
    assert len(said) == 1 and said[0].startswith("W&B unavailable (") and "wandb sync" in said[0], said
    warnings = [r.getMessage() for r in caplog.records if "W&B unavailable" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once
    run_dir = Path(rec["run_dir"])
    assert [r["step"] for r in records.MetricsLog(run_dir).read() if "train/loss" in r] == list(range(2, 17, 2))

    # W&B's offline files, ready for `wandb sync` once the server is back (checked without uploading)
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{rec['run_id']}"))
    assert len(offline) == 1 and (offline[0] / f"run-{rec['run_id']}.wandb").stat().st_size > 0
    assert str(offline[0]) in said[0]
    wandb_cli = shutil.which("wandb", path=str(Path(sys.executable).parent))
    dry = subprocess.run([wandb_cli, "sync", "--dry-run", str(offline[0])], capture_output=True, text=True,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_SILENT": "true"})
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0 and "Would sync 1 run" in out and f"run-{rec['run_id']}.wandb" in out, out

