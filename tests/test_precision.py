"""train.precision: which precision a run computes in, on which device, and what is refused."""

import pytest
import torch

from mixer_scaling import records
from mixer_scaling.config import compose
from mixer_scaling.errors import UserError
from mixer_scaling.evaluate.downstream import features
from mixer_scaling.precision import cpu_has_bf16, resolve
from mixer_scaling.train import build, evaluate, run

from conftest import ROOT, run_cli

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_auto_is_bf16_exactly_where_the_device_has_it(device):
    assert resolve("auto", device, has_bf16=True) == "bf16"
    assert resolve("auto", device, has_bf16=False) == "fp32"
    assert resolve("fp32", device, has_bf16=True) == "fp32"
    assert resolve("bf16", device, has_bf16=True) == "bf16"


def test_bf16_is_refused_where_it_would_only_be_emulated():
    with pytest.raises(UserError, match=r"train.precision=bf16 is not allowed on this CPU .*use train.precision=fp32"):
        resolve("bf16", CPU, has_bf16=False)
    with pytest.raises(UserError, match=r"train.precision=bf16 is not allowed on this GPU"):
        resolve("bf16", CUDA, has_bf16=False)


def test_an_unknown_precision_is_one_line_and_nothing_is_created(tmp_path):
    out = run_cli(["-m", "mixer_scaling.train", "train.precision=fp16", f"runs_dir={tmp_path / 'runs'}"], cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: train.precision='fp16' is not allowed; choose one of: auto, bf16, fp32")
    assert not (tmp_path / "runs").exists()


def test_cpu_bf16_is_read_from_the_cpu_flags():
    flags = {f for line in open("/proc/cpuinfo") if line.startswith(("flags", "Features"))
             for f in line.split(":", 1)[1].split()}
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert resolve("auto", CPU) == ("bf16" if cpu_has_bf16() else "fp32")


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_on_cpu_trains_and_evaluates_in_bf16(tiny):
    """The same run in both precisions: both learn and the record says which; and evaluation follows
    the precision: the same weights evaluated in bf16 and in fp32 give different features."""
    recs = {p: run(compose([*tiny, f"train.precision={p}"])) for p in ("fp32", "bf16")}
    assert {p: r["precision"] for p, r in recs.items()} == {"fp32": "fp32", "bf16": "bf16"}
    assert recs["fp32"]["run_id"] != recs["bf16"]["run_id"]
    for r in recs.values():
        assert r["metrics"]["fewshot"]["digits"]["5"] > 0.12  # chance is 0.1

    cfg = compose([*tiny, "train.precision=bf16"])
    built = build(cfg, CPU)
    built.model.load_state_dict(torch.load(records.Path(recs["bf16"]["run_dir"]) / records.CHECKPOINT_FILE,
                                           weights_only=False)["model"])
    data = built.fewshot_sets["digits"]
    feats = {}
    for p in ("fp32", "bf16"):
        built.precision = p
        feats[p] = features(built.model, data.test, CPU, 128, getattr(data, "collate_fn", None),
                            bf16=built.precision == "bf16")[0]
        assert evaluate(cfg, built)[0]["val_top1"] >= 0
    assert feats["fp32"].dtype == feats["bf16"].dtype == torch.float32
    assert not torch.equal(feats["fp32"], feats["bf16"])
    assert torch.allclose(feats["fp32"], feats["bf16"], atol=0.1, rtol=0.05)  # the same function, rounded
