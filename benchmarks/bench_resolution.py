"""4. Cost as images grow: Mixer-B/16 vs ViT-B/16 inference throughput at increasing resolution.

    .venv/bin/python benchmarks/bench_resolution.py [--quick] [--device cpu|cuda]

At 224, 448, 672 and 896 pixels (196 to 3136 tokens) both models are built for that resolution and
timed interleaved, with a batch that keeps the tokens per forward pass about constant (16 images at
224, 1 at 896), so every point uses the machine equally well. The growth exponent is the slope of
log(seconds per image) against log(tokens) between the smallest and the largest resolution:
1 for cost linear in the number of tokens (Mixer: its token-mixing MLP has a fixed hidden width D_S),
up to 2 for quadratic (ViT's self-attention; at these sizes its linear layers still dominate, so its
exponent sits in between and rises with resolution). Goal: Mixer's exponent <= 1.15 (linear);
ViT's is reported beside its FLOP-count exponent, and the Mixer/ViT throughput ratio at every size.
The models are built and run as in benchmark 3 (``bench_inference.py``): as a run builds them on the
device (CPU: timm's fused attention off), in the run's precision (``train.precision=auto``: bf16
where the device has native bf16, else fp32; the rows say which).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build, forward_fn  # noqa: E402
from common import device_cli, interleave, median, on_devices, row, run_precision, where  # noqa: E402

BENCH = "4 cost vs resolution"
MODELS = {"mixer": "mixer/b16", "vit": "vit/b16"}
SIZES = (224, 448, 672, 896)
TOKENS_PER_PASS = 16 * 196


def curve(device, sizes, repeats: int) -> dict[str, dict[int, float]]:
    """Seconds per image for each model at each size (medians of interleaved timings)."""
    import torch

    cuda = device.type == "cuda"
    prec = run_precision(device)
    out: dict[str, dict[int, float]] = {k: {} for k in MODELS}
    for size in sizes:
        tokens = (size // 16) ** 2
        bs = max(1, round(TOKENS_PER_PASS * (8 if cuda else 1) / tokens))
        x = torch.randn(bs, 3, size, size, device=device)
        models = {k: build(n, size, device) for k, n in MODELS.items()}
        times = interleave({k: forward_fn(m, x, device, prec) for k, m in models.items()}, repeats, 1, device)
        for k, ts in times.items():
            out[k][size] = median(ts) / bs
        del models
    return out


def exponent(per_image: dict[int, float]) -> float:
    sizes = sorted(per_image)
    lo, hi = sizes[0], sizes[-1]
    return math.log(per_image[hi] / per_image[lo]) / math.log(((hi // 16) ** 2) / ((lo // 16) ** 2))


def measure(device, quick: bool) -> list[dict]:
    from mixer_scaling.models import forward_flops

    sizes = SIZES[:2] if quick else SIZES
    sec = curve(device, sizes, repeats=2 if quick else 3)
    prec = run_precision(device)
    on = where(device, prec)
    flops = {k: {s: forward_flops(n, s) for s in sizes} for k, n in MODELS.items()}
    rows = []
    for k, name in MODELS.items():
        flop_exp = exponent(flops[k])
        pts = ", ".join(f"{s}px: {1 / sec[k][s]:.2f}" for s in sizes)
        rows.append(row(BENCH, f"{name} time/img growth exponent vs tokens ({on})", exponent(sec[k]),
                        "<= 1.15" if k == "mixer" else "", "",
                        f"FLOPs exponent {flop_exp:.2f}; img/s {pts}"))
    for s in sizes:
        tokens = (s // 16) ** 2
        r = row(BENCH, f"mixer/b16 / vit/b16 img/s at {s}px ({tokens} tokens, {on})",
                sec["vit"][s] / sec["mixer"][s], "", "x",
                f"{1 / sec['mixer'][s]:.2f} vs {1 / sec['vit'][s]:.2f} img/s; FLOPs ratio "
                f"{flops['vit'][s] / flops['mixer'][s]:.2f} ({flops['mixer'][s] / 1e9:.0f} vs "
                f"{flops['vit'][s] / 1e9:.0f} GFLOPs/img)")
        r["extra"] = {"size": s, "tokens": tokens, "device": device.type, "precision": prec,
                      "mixer_s_per_img": sec["mixer"][s], "vit_s_per_img": sec["vit"][s],
                      "mixer_flops": flops["mixer"][s], "vit_flops": flops["vit"][s]}
        rows.append(r)
    return rows


def run(quick: bool = False, device: str | None = None) -> list[dict]:
    return on_devices(measure, quick, device)


def main(argv: list[str] | None = None) -> int:
    return device_cli(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
