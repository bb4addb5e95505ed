"""1-2. Training step of our Mixer against timm's ``MlpMixer``, and model FLOPs utilisation (MFU).

    .venv/bin/python benchmarks/bench_train.py [--quick] [--device cpu|cuda]

A training step is forward, cross-entropy, backward and an AdamW step (lr 1e-3, weight decay 0.03,
the same optimizer object type for both models). timm's model is built with our model's patch,
width, token/channel MLP widths and depth and loads our weights (strict), so both compute the same
function on the same batch. float32 on the CPU (Mixer-S/16 at 224, batch 16; ``tiny`` at 32, batch
128); bf16 autocast on a GPU when there is one (Mixer-B/16 at 224, batch 128).

1. ``ours/timm``: timm's median step time over ours (> 1: ours is faster); goal >= 1.10.
2. MFU: our achieved training FLOP/s (3 × forward FLOPs × batch / step time; forward FLOPs from
   :func:`mixer_scaling.models.forward_flops`, a multiply-add = 2) over the machine's matmul peak,
   measured in the same run: a 2048² float32 (CPU) or 8192² bf16 (GPU) ``torch.mm``, timed
   interleaved with the steps. Goals: >= 0.60 on CPU, >= 0.50 for B/16 bf16 on an H100.

Ours, timm and the matmul are timed A/B/C/A/B/C after warm-up; the medians are compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, matmul_fn, median, print_rows, row, set_threads  # noqa: E402

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


def step_fn(model, x, y, bf16: bool):
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.03)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, image_size: int, batch: int, device, repeats: int, warmup: int = 2) -> list[dict]:
    import torch

    from mixer_scaling.models import build_model, forward_flops

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    ours = build_model({"name": name}, num_classes=1000, image_size=image_size).to(device)
    twin = timm_twin(ours, name, image_size).to(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    mm, mm_flops = matmul_fn(device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 2048)
    times = interleave({"ours": step_fn(ours, x, y, cuda), "timm": step_fn(twin, x, y, cuda), "mm": mm},
                       repeats=repeats, warmup=warmup, device=device)
    t_ours, t_timm, t_mm = median(times["ours"]), median(times["timm"]), median(times["mm"])
    flops = 3 * forward_flops(name, image_size, num_classes=1000) * batch
    achieved, peak = flops / t_ours, mm_flops / t_mm
    where = f"{'bf16 ' + torch.cuda.get_device_name(device) if cuda else f'fp32 CPU x{torch.get_num_threads()}'}"
    case = f"{name}@{image_size} b{batch} {where}"
    spread = max(times["ours"]) / min(times["ours"])
    return [
        row(RATIO, case, t_timm / t_ours, ">= 1.10", "x",
            f"ours {batch / t_ours:.1f} img/s, timm {batch / t_timm:.1f} img/s (median of {repeats}, "
            f"max/min {spread:.2f})"),
        row(MFU, case, achieved / peak, MFU_GOAL[device.type], "",
            f"{achieved / 1e9:.0f} GFLOP/s of {peak / 1e9:.0f} peak ({'8192' if cuda else '2048'}² mm), "
            f"timm {flops / t_timm / peak:.2f}"),
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
