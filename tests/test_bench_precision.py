"""The benchmarks measure what runs do: the run's precision, models built as runs build them on the CPU
(timm's fused attention off), and the bf16/fp32 training-step rows of ``make bench``. Benchmarks
themselves are never run here; these check their helpers on the smallest model, in seconds."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_precision  # noqa: E402
import common  # noqa: E402

CPU = torch.device("cpu")


def test_benchmarks_use_and_name_the_run_precision():
    from mixer_scaling.precision import resolve

    prec = common.run_precision(CPU)
    assert prec == resolve("auto", CPU)
    assert common.where(CPU, prec) == f"{prec} CPU x{torch.get_num_threads()}"


def test_models_are_built_as_runs_build_them_on_the_cpu_and_the_switch_is_restored():
    from timm.layers import use_fused_attn

    from mixer_scaling.models import build_model

    before = use_fused_attn()
    with common.built_as_runs(CPU):
        vit = build_model({"name": "vit/micro"}, num_classes=10, image_size=16)
    assert not any(getattr(m, "fused_attn", False) for m in vit.modules())
    assert use_fused_attn() == before


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_train_step_is_a_run_step_in_the_given_precision(prec):
    from mixer_scaling.config import compose
    from mixer_scaling.models import build_model

    cfg = compose(["model=mixer/micro", "data.image_size=16"])
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=10, image_size=16)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    w0 = model.head.weight.detach().clone()
    common.train_step_fn(model, cfg.train, x, y, CPU, prec)()
    assert seen == [torch.bfloat16 if prec == "bf16" else torch.float32]
    assert model.head.weight.dtype == torch.float32 and not torch.equal(model.head.weight, w0)


def test_precision_rows_give_each_ratio_and_one_row_for_every_family(monkeypatch):
    monkeypatch.setattr(bench_precision, "MODELS", ("mixer/micro", "vit/micro"))
    monkeypatch.setattr(bench_precision, "SIZES", (16,))
    monkeypatch.setattr(bench_precision, "CALL_S", 0.0)
    rows = bench_precision.run(quick=True)  # quick: every other model, 3 repeats
    assert [r["metric"].split(":")[0] for r in rows[:-1]] == ["mixer/micro@16 b64"]
    goal = ">= 1.0" if common.run_precision(CPU) == "bf16" else ""
    for r in rows:
        assert r["benchmark"] == bench_precision.BENCH and r["unit"] == "x" and r["goal"] == goal
        assert r["value"] > 0
    extra = rows[0]["extra"]
    assert rows[0]["value"] == pytest.approx(extra["bf16_img_per_s"] / extra["fp32_img_per_s"])
    assert "bf16 >= 1.0x fp32 for every family" in rows[-1]["note"]
    assert rows[-1]["value"] == min(r["value"] for r in rows[:-1])
