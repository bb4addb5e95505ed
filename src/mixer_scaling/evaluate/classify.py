"""Upstream validation accuracy and the frozen features downstream evaluation uses."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler


def ordered_loader(dataset: Dataset, batch_size: int, collate_fn=None, num_workers: int = 0) -> DataLoader:
    """Deterministic, in-order batches (evaluation never reshuffles or drops examples)."""
    sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
    # its own generator: an evaluation in the middle of training never draws from the global RNG
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      generator=torch.Generator())


@torch.inference_mode()
def map_batches(fn: Callable, model: torch.nn.Module, loader: DataLoader, device: torch.device,
                bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``fn(model, x)`` to every batch in eval mode; returns (outputs float32 on CPU, labels)."""
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    outs, labels = [], []
    try:
        for x, y in loader:
            with autocast:
                outs.append(fn(model, x.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def top1(model, loader, device, bf16: bool = False) -> float:
    logits, labels = map_batches(lambda m, x: m(x), model, loader, device, bf16)
    return (logits.argmax(1) == labels).float().mean().item()
