"""Shard decoding + training transform per CPU core at 224 px, and the cores per GPU Mixer-B/16 needs.

    .venv/bin/python benchmarks/bench_shards.py [--quick]

Packs a small set of photograph-like synthetic images (smooth colour fields with edges and grain, stored
as the pack stores them: shorter side 256, JPEG quality 90) into shards in a temporary folder, then
times what a DataLoader worker does per training sample (:class:`mixer_scaling.data.shards.ShardTrainSet`:
random access into the tar through wids, JPEG decode, timm's training transform at 224 px: inception
crop, flip, to tensor, normalise; and again with the ImageNet recipe's RandAugment ``rand-m15-n2``), on
one thread. The two transforms are timed interleaved, medians of the repeats.

The GPU side: Mixer-B/16's training rate, from ``benchmarks/results/gpu_check*.json`` when
``benchmarks/gpu_check.py`` wrote one on a GPU (its ``speed`` section), else timm's published training
throughput for ``mixer_b16_224`` (:data:`TIMM_MIXER_B16`: RTX 3090, AMP, batch 256, PyTorch 1.12;
huggingface/pytorch-image-models, ``results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv``). Cores
needed per GPU = that rate / the per-core rate, beside ``cpus_per_task`` of the GPU presets in
``conf/resources/`` (the goal: it fits). A faster GPU needs proportionally more cores.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, row  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIZE, STORED, IMAGES, CLASSES = 224, 256, 96, 4
TIMM_MIXER_B16 = (528.02, "timm's published training throughput for mixer_b16_224 (RTX 3090, AMP, batch 256; "
                  "pytorch-image-models results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv)")


def _images(root: Path, n: int) -> None:
    """ImageFolder of smooth, photo-like PNGs (random sizes around 400x330) so JPEG sizes are realistic."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(300, 360)), int(rng.integers(380, 480))
        low = rng.random((6, 8, 3)) * 255
        field = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), float)
        yy, xx = np.mgrid[:h, :w]
        edge = ((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) > rng.uniform(-200, 200))[..., None] * 40.0
        pixels = np.clip(field + edge + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        for split in ("train", "val") if i < CLASSES else ("train",):
            folder = root / split / f"c{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def gpu_rate() -> tuple[float, str]:
    """Mixer-B/16 training img/s on one GPU, and where it comes from: the newest GPU run of
    ``benchmarks/gpu_check.py`` (``sections.speed["mixer/b16"]``, the faster of eager and compiled), else
    timm's published figure."""
    for path in sorted(RESULTS.glob("gpu_check*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
            speed = data["sections"]["speed"]["mixer/b16"] if data.get("mode") == "gpu" else None
        except (OSError, ValueError, KeyError, TypeError):
            continue
        modes = {m: speed[m]["img_per_s"] for m in ("eager", "compiled")
                 if isinstance(speed, dict) and isinstance(speed.get(m), dict) and speed[m].get("img_per_s")}
        if modes:
            mode = max(modes, key=modes.get)
            return float(modes[mode]), f"{path.name}: {data.get('gpu') or 'GPU'}, {mode}"
    return TIMM_MIXER_B16


def presets() -> dict[str, int]:
    """``cpus_per_task`` of the GPU presets (``conf/resources/gpu*.yaml``)."""
    from omegaconf import OmegaConf

    out = {}
    for path in sorted((ROOT / "src" / "mixer_scaling" / "conf" / "resources").glob("gpu*.yaml")):
        cfg = OmegaConf.load(path)
        out[path.stem] = int(OmegaConf.select(cfg, "hydra.launcher.cpus_per_task"))
    return out


def per_core_rates(repeats: int, batch: int) -> dict[str, float]:
    """Samples/s on one thread: decode + training transform, plain and with RandAugment, interleaved."""
    from mixer_scaling.data.build import build_data
    from mixer_scaling.data.pack import pack

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "shards"
        _images(src, IMAGES)
        pack(src, out, image_size=STORED, shard_size=32, progress=False)
        cfg = dict(name="shards", root=str(out), fraction=1.0, image_size=SIZE, seed=0, shuffle_buffer=1000,
                   flip=True, crop_scale=[0.08, 1.0], crop_pct=0.875, num_workers=0, permutation=None,
                   permutation_seed=0, permutation_patch=None)
        sets = {"plain": build_data({**cfg, "randaugment": None}).train,
                "rand-m15-n2": build_data({**cfg, "randaugment": "rand-m15-n2"}).train}
        order = sets["plain"].order(seed=0)
        times: dict[str, list[float]] = {k: [] for k in sets}
        for r in range(repeats + 1):  # the first round warms up (file cache, open shards)
            idx = order.global_batch(r, batch).tolist()
            for name in (list(sets) if r % 2 else list(sets)[::-1]):
                t0 = time.perf_counter()
                for k, i in enumerate(idx):
                    sets[name][(i, (0, r * batch + k))]
                if r:
                    times[name].append(batch / (time.perf_counter() - t0))
        return {k: statistics.median(v) for k, v in times.items()}


def run(quick: bool = False) -> list[dict]:
    repeats, batch = (3, 32) if quick else (7, 64)
    rates = per_core_rates(repeats, batch)
    gpu, source = gpu_rate()
    cpus = presets()
    fits = min(cpus.values()) if cpus else None
    where = ", ".join(f"{k} {v}" for k, v in cpus.items())
    rows = [row("9 shard decode + transform", f"224 px, {name}: img/s per core", v, "", "img/s",
                f"JPEG {STORED} px shorter side, wids random access, timm training transform; median of {repeats} "
                f"batches of {batch}") for name, v in rates.items()]
    for name, v in rates.items():
        rows.append(row("9 cores per GPU for Mixer-B/16", f"{name}: {gpu:.0f} img/s / {v:.0f} img/s per core",
                        gpu / v, f"<= {fits}" if fits else "", "cores",
                        f"GPU rate: {source}; cpus_per_task of the presets: {where}"))
    return rows


def main() -> None:
    quick = "--quick" in sys.argv
    for r in run(quick):
        print(f"{r['benchmark']:<32} {r['metric']:<56} {r['value']:>8.2f} {r['unit']:<6} {r['goal']:<6} "
              f"{'' if r['met'] is None else 'met' if r['met'] else 'MISSED'}  {r['note']}")


if __name__ == "__main__":
    main()
