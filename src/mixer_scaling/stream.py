"""The order in which a run sees its training examples, as a pure function of (seed, step).

The training set is read as an endless stream of epochs, each a fresh permutation seeded by
(seed, epoch); step ``s`` takes positions ``[s*B, (s+1)*B)`` of that stream. So a run of any subset
size sees exactly ``train.examples_seen`` examples (epochs = examples_seen / subset size, the paper's
constant-steps budget), batches may straddle epoch ends, and a resumed run restarts the stream at
its step with nothing to save but the step itself. With several data-parallel ranks each rank takes
a strided share of the same global batch, so the global batch keeps its meaning.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


class StreamSampler(Sampler[list[int]]):
    """Batch sampler over steps ``start_step .. total_steps-1``."""

    def __init__(self, size: int, batch_size: int, total_steps: int, *, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} is not divisible by the {world_size} data-parallel ranks")
        self.size, self.batch_size, self.total_steps = size, batch_size, total_steps
        self.seed, self.start_step, self.rank, self.world_size = seed, start_step, rank, world_size
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.size, generator=g), epoch
        return self._perm

    def global_batch(self, step: int) -> list[int]:
        out: list[int] = []
        pos, end = step * self.batch_size, (step + 1) * self.batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.size)
            take = min(end - pos, self.size - offset)
            out.extend(self._permutation(epoch)[offset:offset + take].tolist())
            pos += take
        return out

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield self.global_batch(step)[self.rank::self.world_size]

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def total_steps(examples_seen: int, batch_size: int) -> int:
    return math.ceil(examples_seen / batch_size)
