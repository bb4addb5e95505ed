"""1-2. Training step of our Mixer against timm's ``MlpMixer``, and model FLOPs utilisation (MFU).

    .venv/bin/python benchmarks/bench_train.py [--quick] [--device cpu|cuda]

A training step is forward, cross-entropy, backward and an AdamW step (lr 1e-3, weight decay 0.03,
the same optimizer object type for both models). timm's model is built with our model's patch,
width, token/channel MLP widths and depth and loads our weights (strict), so both compute the same
function on the same batch. The step runs in the precision a run uses on the device
(``train.precision=auto``, :func:`mixer_scaling.precision.resolve`: bf16 autocast where the device
has native bf16, a GPU or an AMX / AVX512-BF16 CPU, else fp32), and every row says which. CPU:
Mixer-S/16 at 224, batch 16, and ``tiny`` at 32, batch 128; GPU: Mixer-B/16 at 224, batch 128.

1. ``ours/timm``: timm's median step time over ours (> 1: ours is faster); goal >= 1.10.
2. MFU: our achieved training FLOP/s (3 × forward FLOPs × batch / step time; forward FLOPs from
   :func:`mixer_scaling.models.forward_flops`, a multiply-add = 2) over the machine's matmul peak in
   the precision the step computes in, measured in the same run: a 2048² (CPU) or 8192² (GPU)
   ``torch.mm`` in bf16 or fp32, timed interleaved with the steps. A bf16 step on the CPU also
   gets a 2048² fp32 ``torch.mm`` timed beside it, and its note gives the MFU against that fp32 peak
   too (the peak the fp32 rows of earlier results, and ``launch.cpu_core_gflops``, use). Goals:
   >= 0.60 on CPU, >= 0.50 for B/16 bf16 on an H100.

Ours, timm and the matmul(s) are timed A/B/C/A/B/C after warm-up; the medians are compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (autocast, interleave, matmul_fn, median, print_rows, row, run_precision,  # noqa: E402
                    set_threads, where)

RATIO = "1 train step: ours/timm"
MFU = "2 MFU (train FLOP/s / mm peak)"
# (model, image size, batch) per device type
CASES = {"cpu": [("mixer/s16", 224, 16), ("mixer/tiny", 32, 128)],
         "cuda": [("mixer/b16", 224, 128)]}
MFU_GOAL = {"cpu": ">= 0.60", "cuda": ">= 0.50"}


def timm_twin(ours, name: str, image_size: int):
    """timm's MlpMixer with our model's dimensions, loaded with our weights."""
    from timm.models.mlp_mixer import MlpMixer as TimmMixer

    from mixer_scaling.models import get_spec

    k = get_spec(name).kwargs
    c = k["embed_dim"]
    twin = TimmMixer(num_classes=ours.num_classes, img_size=image_size, patch_size=k["patch_size"],
                     num_blocks=k["num_blocks"], embed_dim=c,
                     mlp_ratio=(k["tokens_mlp_dim"] / c, k["channels_mlp_dim"] / c))
    b0 = twin.blocks[0]
    assert (b0.mlp_tokens.fc1.out_features, b0.mlp_channels.fc1.out_features) == \
        (k["tokens_mlp_dim"], k["channels_mlp_dim"]), "timm twin has other dimensions"
    twin.load_state_dict(ours.state_dict(), strict=True)
    return twin


def step_fn(model, x, y, device, prec: str):
    """One training step of ``model`` in the resolved precision ``prec`` (as a run's loop does it)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.03)
    context = autocast(device, prec)

    def step():
        with context:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, image_size: int, batch: int, device, repeats: int, warmup: int = 2) -> list[dict]:
    import torch

    from mixer_scaling.models import build_model, forward_flops

    prec = run_precision(device)
    torch.manual_seed(0)
    ours = build_model({"name": name}, num_classes=1000, image_size=image_size).to(device)
    twin = timm_twin(ours, name, image_size).to(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    n = 8192 if device.type == "cuda" else 2048
    fns = {"ours": step_fn(ours, x, y, device, prec), "timm": step_fn(twin, x, y, device, prec)}
    fns["mm"], mm_flops = matmul_fn(device, torch.bfloat16 if prec == "bf16" else torch.float32, n)
    fp32_too = prec == "bf16" and device.type == "cpu"
    if fp32_too:  # the fp32 peak beside it: MFU as the fp32 rows of earlier results measure it
        fns["mm_fp32"], _ = matmul_fn(device, torch.float32, n)
    times = interleave(fns, repeats=repeats, warmup=warmup, device=device)
    t_ours, t_timm, t_mm = median(times["ours"]), median(times["timm"]), median(times["mm"])
    flops = 3 * forward_flops(name, image_size, num_classes=1000) * batch
    achieved, peak = flops / t_ours, mm_flops / t_mm
    case = f"{name}@{image_size} b{batch} {where(device, prec)}"
    spread = max(times["ours"]) / min(times["ours"])
    mfu_note = (f"{achieved / 1e9:.0f} GFLOP/s of {peak / 1e9:.0f} peak ({n}² {prec} mm), "
                f"timm {flops / t_timm / peak:.2f}")
    if fp32_too:
        peak32 = mm_flops / median(times["mm_fp32"])
        mfu_note += f"; against the fp32 peak ({n}² fp32 mm, {peak32 / 1e9:.0f} GFLOP/s): {achieved / peak32:.2f}"
    return [
        row(RATIO, case, t_timm / t_ours, ">= 1.10", "x",
            f"ours {batch / t_ours:.1f} img/s, timm {batch / t_timm:.1f} img/s (median of {repeats}, "
            f"max/min {spread:.2f})"),
        row(MFU, f"{case} vs {prec} mm peak", achieved / peak, MFU_GOAL[device.type], "", mfu_note),
    ]


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    import torch

    set_threads()
    devices = [device] if device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in map(torch.device, devices):
        for name, size, batch in CASES[dev.type]:
            rows += measure(name, size, batch, dev, repeats=3 if quick else 9, warmup=1 if quick else 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the CPU, and the GPU when there is one)")
    args = p.parse_args(argv)
    print_rows(run(args.quick, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
