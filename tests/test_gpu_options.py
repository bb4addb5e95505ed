"""Device options: train.compile, train.tf32, train.channels_last: validated, resolved, recorded; a compiled
run trains like an eager one and leaves weights that uncompiled code loads.

torch.compile runs with the aot_eager backend here (engine.COMPILE_BACKEND patched): inductor, the
default, generates and builds C++ kernels on the CPU, ~40 s for the micro model on 2 busy cores, while
aot_eager traces the same graphs (forward and backward through AOTAutograd) in a few seconds.
"""

import logging

import pytest
import torch
from omegaconf import OmegaConf

from mixer_scaling import checkpoint, engine, precision, records
from mixer_scaling.config import compose
from mixer_scaling.data.build import passthrough
from mixer_scaling.data.synthetic import SyntheticImages
from mixer_scaling.engine import Loop
from mixer_scaling.errors import UserError
from mixer_scaling.models import build_model
from mixer_scaling.records import read_record, run_id_of
from mixer_scaling.train import run

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SMALL = ["model=mixer/micro", "model.image_size=16", "train.examples_seen=256", "train.log_every=1",
         "train.precision=fp32", "data.size=512", "data.val_size=64", "fewshot.datasets=[digits]", "fewshot.shots=[1]",
         "eval.batch_size=64", "eval.throughput_batch_sizes=[8]", "eval.throughput_repeats=1", "wandb.mode=disabled",
         "progress=false", "train.batch_size=64", "train.warmup_steps=1", "train.checkpoint_every=0"]


def test_every_recipe_sets_them():
    for recipe in ("cpu", "imagenet", "jft", "finetune"):
        t = compose([f"train={recipe}"]).train
        assert (t.compile, t.tf32, t.channels_last) == (False, True, "auto"), recipe


def test_channels_last_auto_is_on_for_convolutions_on_cuda_and_tf32_only_for_fp32_on_cuda():
    assert precision.channels_last("auto", "bit", CUDA) is True
    assert precision.channels_last("auto", "bit", CPU) is False
    assert precision.channels_last("auto", "mixer", CUDA) is precision.channels_last("auto", "vit", CUDA) is False
    assert precision.channels_last(True, "mixer", CPU) is True and precision.channels_last(False, "bit", CUDA) is False
    with pytest.raises(UserError, match=r"^train.channels_last='yes' is not allowed; choose one of: auto, true, false$"):
        precision.channels_last("yes", "bit", CPU)
    assert precision.tf32(True, CUDA, "fp32") is True
    assert not precision.tf32(True, CUDA, "bf16") and not precision.tf32(True, CPU, "fp32")
    assert not precision.tf32(False, CUDA, "fp32")
    before = torch.backends.cuda.matmul.allow_tf32
    precision.set_tf32(CPU, not before)  # nothing on the CPU
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(engine, "COMPILE_BACKEND", "aot_eager")
    # torch's structured trace of every compiled graph, otherwise kept by pytest's log capture (half the time)
    monkeypatch.setattr(logging.getLogger("torch.__trace"), "disabled", True)


def _micro() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(compose(SMALL).model, num_classes=10, image_size=16)


def _losses(tmp_path, compiled: bool) -> list[float]:
    rows = []
    t = OmegaConf.merge(compose(SMALL).train, {"examples_seen": 192})
    Loop(model=_micro(), train_set=SyntheticImages(256, image_size=16, classes=10), collate_fn=passthrough,
         num_classes=10, cfg=t, seed=0, device=CPU, ckpt_path=tmp_path / f"{compiled}.pt", on_log=rows.append,
         compile=compiled, progress=False).run()
    return [r["train/loss"] for r in rows]


def test_a_compiled_loop_trains_like_the_eager_one(tmp_path, aot_eager):
    eager, compiled = _losses(tmp_path, False), _losses(tmp_path, True)
    assert len(eager) == 3 and compiled == pytest.approx(eager, rel=1e-4)


def test_a_compiled_run_records_its_options_and_leaves_weights_uncompiled_code_loads(tmp_path, aot_eager):
    rec = run(compose([*SMALL, f"runs_dir={tmp_path}", "train.compile=true", "train.channels_last=true"]))
    on_disk = read_record(tmp_path / rec["run_id"])
    assert on_disk["status"] == "done"
    assert (on_disk["compile"], on_disk["tf32"], on_disk["channels_last"]) == (True, False, True)  # no TF32 on a CPU
    state = checkpoint.load(tmp_path / rec["run_id"] / records.CHECKPOINT_FILE)["model"]
    assert not [k for k in state if k.startswith("_orig_mod.")]
    torch.manual_seed(0)
    build_model(compose(SMALL).model, num_classes=rec["num_classes"], image_size=16).load_state_dict(state)  # strict
    assert run_id_of(compose(SMALL)) == rec["run_id"]  # not identity: the same run, however fast
