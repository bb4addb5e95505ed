"""Upstream validation accuracy and the frozen features downstream evaluation uses.

Both can be split across the ranks of a data-parallel run (``rank``, ``world_size``): each rank takes
one contiguous block of the set (:func:`shard`), and the parts are combined exactly (hit counts are
summed; features are gathered on rank 0 in rank order), so the result equals the single-process one.
Every rank must then call the function, in the same order as the others. With the default
``world_size=1`` nothing is communicated, whether or not a process group exists.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    SequentialSampler,
    Subset,
)

from .. import distributed, precision


def ordered_loader(dataset: Dataset, batch_size: int, collate_fn=None, num_workers: int = 0,
                   pin_memory: bool = False) -> DataLoader:
    """Deterministic, in-order batches (evaluation never reshuffles or drops examples)."""
    sampler = BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last=False)
    # its own generator: an evaluation in the middle of training never draws from the global RNG
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator())


def shard(dataset: Dataset, rank: int = 0, world_size: int = 1) -> Dataset:
    """Rank ``rank``'s contiguous block of ``dataset`` (sizes differ by at most one; the blocks in rank
    order are the whole set, each example once). ``dataset`` itself for one rank."""
    if world_size == 1:
        return dataset
    n = len(dataset)
    return Subset(dataset, range(n * rank // world_size, n * (rank + 1) // world_size))


def _autocast(device: torch.device, bf16: bool):
    return precision.autocast(device, "bf16" if bf16 else "fp32")


@torch.inference_mode()
def map_batches(fn: Callable, model: torch.nn.Module, loader: DataLoader, device: torch.device,
                bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``fn(model, x)`` to every batch in eval mode; returns (outputs float32 on CPU, labels)."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    try:
        for x, y in loader:
            with _autocast(device, bf16):
                outs.append(fn(model, x.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    if not outs:  # an empty shard (more ranks than examples)
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(outs), torch.cat(labels)


@torch.inference_mode()
def hits(model: torch.nn.Module, loader: DataLoader, device: torch.device, bf16: bool = False) -> int:
    """How many examples of ``loader`` ``model`` classifies right (top-1), in eval mode."""
    was_training = model.training
    model.eval()
    right = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for x, y in loader:
            with _autocast(device, bf16):
                logits = model(x.to(device, non_blocking=True)).float()
            right += (logits.argmax(1) == torch.as_tensor(y).to(device)).sum()
    finally:
        model.train(was_training)
    return int(right)


def _accuracy(right: int, n: int) -> float:
    # the float32 quotient, which is what the mean of float32 hits gives
    return (torch.tensor(right, dtype=torch.float32) / n).item()


def top1(model: torch.nn.Module, loader: DataLoader, device: torch.device, bf16: bool = False) -> float:
    """Top-1 accuracy of ``model`` on the batches of ``loader`` (one process)."""
    return _accuracy(hits(model, loader, device, bf16), len(loader.dataset))


def split_top1(model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int, collate_fn=None,
               bf16: bool = False, num_workers: int = 0, rank: int = 0, world_size: int = 1) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, each rank classifying its :func:`shard` and the hit
    counts summed over ranks: every rank returns the single-process number."""
    loader = ordered_loader(shard(dataset, rank, world_size), batch_size, collate_fn, num_workers,
                            pin_memory=device.type == "cuda")
    right = hits(model, loader, device, bf16)
    if world_size > 1:
        right = distributed.sum_counts([right])[0]
    return _accuracy(right, len(dataset))
