"""Inference throughput as the paper measures it: images per second, batch size swept, best kept."""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from typing import Sequence

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def inference_throughput(model: torch.nn.Module, image_size: int, device: torch.device,
                         batch_sizes: Sequence[int] = (1, 8, 32, 128), warmup: int = 1, repeats: int = 3,
                         bf16: bool = False) -> dict:
    """Median img/s over ``repeats`` timed forwards for each batch size; the best batch size wins.

    Stops early at the first batch size that runs out of device memory. Returns
    ``{"img_per_s": best, "batch_size": its batch, "per_batch": {bs: img/s}}``.
    """
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    per_batch: dict[int, float] = {}
    try:
        for bs in batch_sizes:
            x = torch.randn(bs, 3, image_size, image_size, device=device)
            try:
                with autocast:
                    for _ in range(warmup):
                        model(x)
                    _sync(device)
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        model(x)
                        _sync(device)
                        times.append(time.perf_counter() - t0)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            per_batch[bs] = bs / statistics.median(times)
    finally:
        model.train(was_training)
    if not per_batch:
        raise RuntimeError(f"no batch size in {list(batch_sizes)} fits on {device}")
    best = max(per_batch, key=per_batch.get)
    return {"img_per_s": per_batch[best], "batch_size": best, "per_batch": per_batch}
