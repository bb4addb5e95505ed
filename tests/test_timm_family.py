"""Any timm model as a family of its own: trains through the real entry point, counts FLOPs with the
same counter, and is collected, drawn and compared under its own label."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import timm
import torch
from conftest import ROOT, run_cli, run_cmd

from mixer_scaling.config import compose, validate
from mixer_scaling.errors import ConfigError
from mixer_scaling.models import (
    check_model_cfg,
    count_params,
    forward_flops,
    get_spec,
    is_convolutional,
)
from mixer_scaling.models.families import FAMILIES, styles
from mixer_scaling.models.flops import count_model_flops

# timm's own test-sized models (0.3-0.4M parameters): a ResNet in the registered family ``resnet``, and a
# ViT with patch 16 under a label no table knows (``tinyvit``), so both kinds of family are exercised.
MODELS = ["resnet/test_resnet", "tinyvit/test_vit"]
FAST = ["train.examples_seen=64", "train.batch_size=32", "train.warmup_steps=1", "train.log_every=1",
        "train.checkpoint_every=4", "train.eval_every_examples=0", "data.size=256", "data.val_size=64",
        "fewshot.datasets=[digits]", "fewshot.shots=[1]",
        "fewshot.seeds=[0]", "eval.batch_size=128", "eval.throughput_batch_sizes=[8]", "eval.throughput_repeats=1",
        "wandb.mode=disabled", "progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both models trained a few steps by ``python -m mixer_scaling.train --multirun`` (one process)."""
    root = tmp_path_factory.mktemp("timm")
    runs = root / "runs"
    proc = run_cli(["-m", "mixer_scaling.train", "--multirun", "model=timm", f"model.name={','.join(MODELS)}",
                    "model.image_size=32", *FAST, f"runs_dir={runs}"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {r["model"]: r for r in (json.loads(p.read_text()) for p in runs.glob("*/result.json"))}
    return root, runs, records


def test_timm_models_train_and_record_their_family_and_counts(trained):
    _, _, records = trained
    assert set(records) == set(MODELS)
    for name, rec in records.items():
        family, size = name.split("/")
        assert rec["status"] == "done" and (rec["family"], rec["size"]) == (family, size)
        assert rec["config"]["model"]["name"] == name and rec["image_size"] == 32
        # the same counter as every family, on timm's model as timm builds it
        with torch.device("meta"):
            kw = {"img_size": 32} if "vit" in size else {}  # a ViT is built for its resolution
            model = timm.create_model(size, num_classes=rec["num_classes"], **kw)
        assert rec["flops_per_image"] == forward_flops(name, 32, num_classes=rec["num_classes"])
        assert rec["flops_per_image"] == count_model_flops(model, 32) > 0
        assert rec["params"] == count_params(model)
    assert records["tinyvit/test_vit"]["patch"] == 16 and records["resnet/test_resnet"]["patch"] is None
    assert records["resnet/test_resnet"]["channels_last"] is False  # convolutional, but channels-last is for CUDA


def test_collect_and_figures_keep_each_family_apart(trained, tmp_path):
    _, runs, _ = trained
    table = tmp_path / "results.csv"
    assert run_cmd(["collect", str(runs), "-o", str(table)]) == 0
    df = pd.read_csv(table)
    assert sorted(zip(df["family"], df["model"])) == sorted((m.split("/")[0], m) for m in MODELS)
    out = tmp_path / "figs"
    assert run_cmd(["figures", str(table), "-o", str(out), "--metric", "val_top1", "--boot", "0"]) == 0
    pts = pd.read_csv(out / "pareto_compute.csv")
    assert set(pts["family"]) == {"resnet", "tinyvit"}
    html = (out / "dashboard.html").read_text()
    assert "ResNet" in html and "tinyvit" in html


def test_each_family_is_drawn_in_its_own_style():
    from mixer_scaling.analysis.figures import draw_pareto, family_styles

    pts = pd.DataFrame({"family": ["mixer", "resnet", "newfam", "otherfam"], "model": list("abcd"),
                        "label": list("abcd"), "x": [1.0, 2.0, 3.0, 4.0], "y": [0.1, 0.2, 0.3, 0.4],
                        "on_frontier": [True] * 4})
    fig, ax = plt.subplots()
    draw_pareto(ax, pts, "x", "y", "lower")
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    plt.close(fig)
    assert {"Mixer (1)", "ResNet (1)", "newfam (1)", "otherfam (1)"} <= legend
    st = family_styles(pts["family"])
    assert st["resnet"][:3] == (FAMILIES["resnet"].color, FAMILIES["resnet"].marker, "ResNet")
    assert len({s[:2] for s in st.values()}) == 4  # no two families share colour and marker
    assert family_styles(["newfam"])["newfam"] == st["newfam"]  # deterministic, whatever else is drawn
    assert "other" not in st and list(styles([None, "mixer"])) == ["mixer", "other"]


def test_findings_compare_extra_families_with_the_paper_families():
    from mixer_scaling.analysis.findings import family_pairs as pairs

    assert pairs(["mixer", "bit", "convnext", "zeta"]) == [
        ("mixer", "bit"), ("convnext", "mixer"), ("convnext", "bit"), ("zeta", "mixer"), ("zeta", "bit"),
        ("convnext", "zeta")]


def test_registry_entry_says_what_is_convolutional():
    assert is_convolutional("bit") and is_convolutional("convnext") and is_convolutional("resnet")
    assert not is_convolutional("mixer") and not is_convolutional("deit") and not is_convolutional("unregistered")


def test_a_timm_config_composes_and_validates():
    cfg = compose(["model=timm", "model.name=convnext/convnext_atto", "model.family=convnext", "model.image_size=32"])
    validate(cfg)
    assert cfg.data.image_size == 32 and get_spec(cfg.model.name).family == "convnext"


@pytest.mark.parametrize("cfg, image_size, words", [
    ({"name": "convnext/convnext_atoo"}, 32, ["model.name='convnext/convnext_atoo'", "not a timm model",
                                              "convnext/convnext_atto"]),
    ({"name": "vit/deit_tiny_patch16_224"}, 32, ["model.name='vit/deit_tiny_patch16_224'", "mixer, vit, bit"]),
    ({"name": "resnet/resnet18.a1_in1k"}, 32, ["pretrained tag", "resnet/resnet18"]),
    ({"name": "resnet/resnet18", "family": "ResNet"}, 32, ["model.family='ResNet'", "lowercase identifier"]),
    ({"name": "resnet/resnet18", "family": "convnext"}, 32, ["model.family='convnext'", "'resnet'"]),
    ({"name": "deit/deit_tiny_patch16_224"}, 40, ["data.image_size=40", "patch size 16"]),
    ({"name": "resnet/resnet18", "gelu": "tanh"}, 32, ["model.gelu", "mixer models only"]),
])
def test_bad_timm_input_is_one_config_error_line(cfg, image_size, words):
    with pytest.raises(ConfigError) as err:
        check_model_cfg(cfg, 10, image_size)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_bad_timm_name_stops_the_entry_point_with_one_line(tmp_path):
    proc = run_cli(["-m", "mixer_scaling.train", "model=timm", "model.name=convnext/convnext_atoo",
                    "model.image_size=32", *FAST, f"runs_dir={tmp_path / 'runs'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "convnext_atoo" in lines[0] and "not a timm model" in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()
