"""The GPU check script (benchmarks/gpu_check.sh) end to end in its ``--cpu`` smoke mode.

The script is meant for a lent GPU machine (its results file is committed when one runs it); between
such sessions this keeps every section working: real training runs started by ``torch.distributed.run``
as a world of one, stopped by SIGTERM and resumed; eager and compiled training steps against a matmul
peak; the inference ratio; the planner's estimate; shards packed and read through the training loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    # aot_eager: the compiled steps without a minute of C++ compilation on 2 cores; one family trains
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(out),
                           "--compile-backend", "aot_eager", "--families", "mixer"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert set(sections) == {"train", "speed", "inference", "memory", "data"}
    assert all(s["ok"] for s in sections.values()), {k: s.get("error") for k, s in sections.items()}

    run = sections["train"]["mixer/micro"]
    assert run["stopped_with_checkpoint"] and run["status"] == "done" and run["attempts"] == 2
    assert 0 < run["resumed_from_step"] < run["steps"]
    assert run["process_group"], "torch.distributed.run's world of one must join a process group"

    for name in ("mixer/micro", "vit/micro", "bit/micro"):
        speed = sections["speed"][name]
        assert speed["eager"]["img_per_s"] > 0 and speed["compiled"]["img_per_s"] > 0
        assert 0 < speed["eager"]["mfu"] < 1.5
        assert sections["memory"][name]["estimate_gb"] > 0
        assert sections["inference"]["img_per_s"][name] > 0
    assert sections["inference"]["paper_mixer_over_vit"] == 1.61
    assert sections["data"]["images"] > 0 and sections["data"]["img_per_s"] > 0
    assert "[gpu_check] wrote" in proc.stdout
