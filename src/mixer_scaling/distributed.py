"""Data-parallel training (torch DDP) across the processes of a job: who is who, and the few collectives a run needs.

A run is data parallel when it is started as several processes: the tasks of a SLURM job (e.g. the
submitit launcher with ``tasks_per_node`` > 1) or a torchrun-style launch (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Each rank trains on its strided share of the same
global batch (:mod:`.stream`), so ``train.batch_size`` and ``train.examples_seen`` mean the same at any
world size; rank 0 alone writes the run directory and logs. Evaluation is split across the ranks (each
a disjoint part of a set, the parts combined exactly: :func:`sum_counts`, :func:`gather_on_main`), of the
weights rank 0 reports (:func:`share_weights`). A single process needs none of this: nothing is
initialised then and every helper here is a no-op.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from datetime import timedelta

import submitit
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# The stop flag and the waits on rank 0 (its checkpoint, its evaluation) go through a CPU (gloo) group:
# a flag on the GPU would sync the CUDA stream at every step, and an evaluation can outlast the default
# collective timeout (10 min with NCCL). A rank that dies still ends these waits at once (its
# connections close); only a hung rank 0 runs into this timeout.
CONTROL_TIMEOUT = timedelta(hours=6)
_control = None


def _launch() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when started as several processes, else None."""
    env = os.environ
    # An explicit launch first: torchrun inside a SLURM job (one task per node) sets these, and its
    # workers are not the job's tasks. A torchrun world of one joins a group too (NCCL on a GPU): the
    # path a many-GPU job takes, checked on one GPU (benchmarks/gpu_check.py).
    if int(env.get("WORLD_SIZE", "1")) > 1 or all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                                      "TORCHELASTIC_RUN_ID")):
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    # The tasks of a SLURM job step (srun's: submitit starts its SLURM jobs so) or of a submitit local job.
    # Not SLURM_NTASKS: the batch script of a several-task job has it too but is one process, which would
    # wait for peers that never come.
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 or int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1:
        env.setdefault("SUBMITIT_EXECUTOR", "slurm")  # how submitit recognises SLURM; a plain srun lacks it
        # Exports MASTER_ADDR (the first node), MASTER_PORT (drawn from the job id), RANK, WORLD_SIZE.
        # CUDA_VISIBLE_DEVICES is left alone: SLURM may already have narrowed it per task (see launched).
        d = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return d.rank, d.world_size, d.local_rank
    return None


def launch_rank() -> int:
    """This process's rank in the job it was started as (0 when it is a single process), known before the
    process group is joined."""
    launch = _launch()
    return launch[0] if launch else 0


@contextmanager
def launched(device: torch.device):
    """Join the job's process group for the block when started as several processes; yields the device to use.

    On CUDA each rank takes the GPU of its local rank (modulo the GPUs it sees, for tasks that see only
    their own) with NCCL; on CPU, gloo. The group is destroyed on the way out, on an exception too,
    so the other ranks fail at once instead of waiting in a collective for this one.
    """
    global _control
    launch = _launch()
    if launch is None:
        yield device
        return
    rank, world_size, local_rank = launch
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    try:
        _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        log.info("data parallel: rank %d of %d on %s", rank, world_size, device)
        yield device
    finally:
        _control = None
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (``x`` on the training device)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)  # a sum: gloo has no AVG
    return x / world_size()


def any_stop(signum: int | None) -> int | None:
    """A stop signal that any rank got, or None, so that all ranks stop after the same step."""
    if world_size() == 1:
        return signum
    flag = torch.tensor(signum or 0)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control)
    return int(flag) or None


def barrier() -> None:
    if world_size() > 1:
        dist.barrier(group=_control)


def gather(obj) -> list:
    """``obj`` of every rank, in rank order."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj, group=_control)
    return out


@contextmanager
def main_first():
    """Rank 0 runs the block before the others do: a data set is downloaded once, not once per rank."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def sum_counts(counts: list[int]) -> list[int]:
    """``counts`` (integers, the same length on every rank) summed over ranks, exactly; every rank gets
    the sums. Through the CPU group, like the waits above: an evaluation step never syncs the GPU stream
    for it, and a rank that is slower to get here does not run into the device group's timeout."""
    if world_size() == 1:
        return list(counts)
    t = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(t, group=_control)
    return [int(v) for v in t]


def gather_on_main(obj) -> list | None:
    """``obj`` of every rank, in rank order, on rank 0; None on the others."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0, group=_control)
    return out


def from_main(obj):
    """Rank 0's ``obj``, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


@torch.no_grad()
def share_weights(model: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (in place): after rank 0 alone has loaded the
    weights a run reports, the other ranks evaluate the same ones."""
    if world_size() == 1:
        return
    for t in model.state_dict().values():
        dist.broadcast(t, src=0)
