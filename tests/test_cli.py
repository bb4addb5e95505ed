"""The `mixer-scaling` command line, run as a user runs it."""

import json

from conftest import run_cli

EXACT = {"mixer/b16": 59_880_472, "mixer/b32": 60_293_428, "mixer/l16": 208_196_168}


def test_models_json_gives_the_official_counts(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for name, params in EXACT.items():
        assert rows[name]["params"] == params
    assert rows["mixer/h14"]["params_backbone"] == 431_069_952
    for r in rows.values():
        assert set(r) >= {"name", "family", "params", "params_backbone", "gflops", "image_size", "patch"}
        assert r["gflops"] > 0 and r["params"] > r["params_backbone"]
    assert {"mixer/tiny", "vit/tiny", "bit/tiny", "vit/h14", "bit/r200x3", "bit/r152x4"} <= set(rows)
    # the paper's Table 1 ordering of cost: B/16 costs ~4x B/32 (4x the tokens)
    assert 3.5 < rows["mixer/b16"]["gflops"] / rows["mixer/b32"]["gflops"] < 4.5


def test_models_num_classes_changes_the_head(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models", "--json", "--num-classes", "10"], cwd=tmp_path)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["mixer/b16"]["params"] == rows["mixer/b16"]["params_backbone"] + 768 * 10 + 10


def test_models_table(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.cli", "models"], cwd=tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "mixer/h14" in proc.stdout and "GFLOPs" in proc.stdout
