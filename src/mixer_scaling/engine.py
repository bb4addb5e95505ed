"""The training loop: optimizer and schedule from timm's factories, checkpoint/resume, logging.

Everything a resumed run needs is in the checkpoint or follows from the step (the batch order is a
pure function of (seed, step), see :mod:`mixer_scaling.stream`), so on CPU an interrupted and
resumed run ends bit for bit like an uninterrupted one. Data parallel (:mod:`mixer_scaling.distributed`),
each rank trains on its share of the global batch under DDP and keeps its own random stream, which the
checkpoint holds too; every rank takes part in upstream validation, rank 0 alone records it.

With ``train.compile`` the module that trains is ``torch.compile`` of the model (of its DDP wrapper when
data parallel); checkpoints and best weights are always the plain model's state dict, which uncompiled
code loads as it is, and evaluation runs the plain model eagerly (its batch shapes vary, each would be
compiled again).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import checkpoint, distributed, precision
from .stream import StreamSampler, total_steps

log = logging.getLogger(__name__)

SELECT_KEY = "val/select_top1"  # what on_eval's score is called in metrics.jsonl
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "lamb", "lion")
SCHEDULES = {"linear": ("poly", 1.0), "cosine": ("cosine", 0.1)}  # ours → (timm sched, decay_rate)
# torch.compile's backend for train.compile; inductor generates kernels (a C++ compiler on the CPU).
COMPILE_BACKEND = "inductor"


# timm's factories are imported where they are used: the config schema imports this module, and
# timm pulls in torchvision and torch._dynamo (~2 s) that a launcher or a sweep relaunch never needs.


def build_optimizer(model: torch.nn.Module, t: Mapping) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    kw = {"betas": tuple(t.betas)} if t.optimizer in ("adam", "adamw", "lamb", "lion") else {}
    if t.optimizer in ("sgd", "momentum") and t.get("momentum") is not None:  # unset: timm's 0.9
        kw["momentum"] = float(t.momentum)
    # timm leaves biases and norm parameters out of weight decay, as big_vision's recipes do.
    return create_optimizer_v2(model, opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, **kw)


def build_scheduler(optimizer, t: Mapping, steps: int):
    """Linear warmup from 0, then linear (the paper) or cosine decay, stepped per update."""
    from timm.scheduler import create_scheduler_v2

    sched, decay_rate = SCHEDULES[t.schedule]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=steps, decay_rate=decay_rate, min_lr=t.min_lr,
        warmup_lr=0.0, warmup_epochs=min(t.warmup_steps, max(steps - 1, 0)),
        step_on_epochs=False, updates_per_epoch=1,
    )
    return scheduler


# SIGUSR2 is what submitit asks SLURM to send before a time limit (and what it sends on preemption).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite: the run has diverged and is recorded as failed."""


class Interrupted(Exception):
    """A stop was requested by a signal; a checkpoint was written at ``step``.

    ``previous_handler`` is whoever handled the signal before the loop took it over (submitit's
    checkpoint-and-requeue handler inside a SLURM job); :meth:`hand_over` passes the signal on to it
    once the run's own checkpoint and record are safely written.
    """

    def __init__(self, step: int, signum: int, previous_handler=None):
        super().__init__(f"stopped by signal {signal.Signals(signum).name} at step {step}; checkpoint saved")
        self.step, self.signum, self.previous_handler = step, signum, previous_handler

    def hand_over(self) -> None:
        h = self.previous_handler
        if callable(h) and h is not signal.default_int_handler:
            h(self.signum, None)


@contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Turn stop signals into a flag checked between steps, so a checkpoint is never taken mid-update."""
    state = {"signum": None, "previous": {}}
    previous = state["previous"]

    def handler(signum, frame):
        state["signum"] = signum

    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: leave signals to the caller
        previous.clear()
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Loop:
    """What one training loop needs; built by :mod:`mixer_scaling.train`.

    With ``world_size`` > 1 every rank runs this loop in step; only rank 0 writes checkpoints and calls
    the callbacks, except ``on_eval``, which every rank calls (an evaluation split across ranks).
    """

    model: torch.nn.Module
    train_set: torch.utils.data.Dataset
    collate_fn: Callable | None
    num_classes: int
    cfg: Mapping                    # the `train` group
    seed: int
    device: torch.device
    ckpt_path: Path
    on_log: Callable[[dict], None] = lambda row: None  # gets one metrics row per logging step
    # upstream validation at `train.eval_every_examples` and at the last step: returns metrics including
    # SELECT_KEY, the score the best checkpoint is chosen on (early stopping, paper §3.3); called on every
    # rank (give it to all or to none), rank 0's result is the one used
    on_eval: Callable[[int], dict] | None = None
    best_path: Path | None = None   # where the best weights go (rank 0); None: no early stopping
    # gets the step training (re)starts from, and what was wrong with the checkpoints on disk (one line each)
    on_resume: Callable[[int, list[str]], None] | None = None
    num_workers: int = 0
    precision: str = "fp32"         # resolved: bf16 (autocast) or fp32, see mixer_scaling.precision
    compile: bool = False           # train torch.compile(model) (train.compile)
    progress: bool = True
    rank: int = 0
    world_size: int = 1
    counters: dict = field(default_factory=lambda: {"train_seconds": 0.0, "examples": 0})

    @property
    def steps(self) -> int:
        return total_steps(self.cfg.examples_seen, self.cfg.batch_size)

    def eval_due(self, step: int) -> bool:
        """Whether upstream validation runs after ``step``: each time the examples seen cross a multiple of
        ``train.eval_every_examples``, and at the last step (when the cadence is set). The same on every
        rank (every rank evaluates, and checkpoints right after)."""
        every, bs = int(self.cfg.get("eval_every_examples", 0)), int(self.cfg.batch_size)
        if not every:
            return False
        return step == self.steps or (step * bs) // every > ((step - 1) * bs) // every

    def _evaluate(self, step: int) -> float:
        """Validate (every rank), and on rank 0 log and keep the weights if they are the best so far (ties:
        the earlier step). Returns the seconds it took (evaluation is not training compute)."""
        t0 = time.perf_counter()
        if self.on_eval is not None:
            row = self.on_eval(step)
            if self.rank == 0:
                self.on_log({"step": step, "examples": step * self.cfg.batch_size, **row})
                score = float(row[SELECT_KEY])
                self.counters.setdefault("curve", []).append([step, step * self.cfg.batch_size, score])
                if self.best_path is not None and score > self.counters.get("best_score", -math.inf):
                    checkpoint.save_weights(self.best_path, model=self.model, step=step, score=score)
                    self.counters["best_step"], self.counters["best_score"] = step, score
            self.model.train()
        spent = time.perf_counter() - t0
        self.counters["eval_seconds"] = self.counters.get("eval_seconds", 0.0) + spent
        return spent

    def _seed(self, start: int) -> int:
        """Rank 0 keeps the single-process seed; the others get their own (augmentation, dropout, mixup)."""
        return self.seed + start + 1_000_003 * self.rank

    def _forward_backward(self, net, loss_fn, autocast, x, y, accum: int,
                          ddp: DistributedDataParallel | None = None) -> torch.Tensor:
        """Gradients of this rank's batch ``(x, y)`` in ``accum`` micro-batches; returns its mean loss
        (detached). Under DDP (``ddp``: the wrapper inside ``net``) the gradients are averaged over ranks
        once, in the last micro-batch's backward."""
        if accum == 1:
            with autocast:
                loss = loss_fn(net(x), y)
            loss.backward()
            return loss.detach()
        total = torch.zeros((), device=x.device)
        for i, (xm, ym) in enumerate(zip(x.chunk(accum), y.chunk(accum))):
            sync = i == accum - 1 or ddp is None
            with (nullcontext() if sync else ddp.no_sync()):
                with autocast:
                    part = loss_fn(net(xm), ym) / accum
                part.backward()
            total += part.detach()
        return total

    def run(self) -> dict:
        """Train to the end (or to a stop signal). Returns the compute counters."""
        optimizer = build_optimizer(self.model, self.cfg)
        scheduler = build_scheduler(optimizer, self.cfg, self.steps)
        start = self._restore(optimizer, scheduler)
        if start >= self.steps:
            return self.counters
        loader = self._loader(start)
        state = self._prepare(optimizer, scheduler, start)
        with stop_on_signals() as stop:
            for x, y in loader:
                grad_norm = self._step(state, x, y)
                step, last = state.step, state.step == self.steps
                if (self.cfg.log_every and step % self.cfg.log_every == 0) or last:
                    self._log(state, grad_norm)
                # All ranks agree, so none waits in a collective for a rank that has stopped.
                signum = distributed.any_stop(stop["signum"])
                due = self.eval_due(step)
                if due and signum:  # a stop checkpoints first (its grace time is short); the resumed run evaluates
                    self.counters["eval_pending"] = step
                elif due:
                    spent = self._evaluate(step)
                    state.seg_t0 += spent  # evaluation time is neither training time nor its throughput
                    state.window_t0 += spent
                # A checkpoint after every evaluation keeps the best weights and the curve in step with it.
                if last or signum or due or (self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0):
                    self._checkpoint(state)
                if signum:
                    state.bar.close()
                    distributed.barrier()  # the other ranks leave only once rank 0's checkpoint is on disk
                    raise Interrupted(step, signum, stop["previous"].get(signum))
        state.bar.close()
        return self.counters

    def _restore(self, optimizer, scheduler) -> int:
        """Resume from the latest valid checkpoint, if any (weights, optimizer, schedule, counters, random
        state; other ranks their own stream), tidy stale best weights, report to ``on_resume`` and run an
        evaluation a stop left pending. Returns the step training starts from."""
        start = 0
        latest = checkpoint.load_latest(self.ckpt_path, tidy=self.rank == 0)
        ckpt = latest.state
        if ckpt is not None:
            checkpoint.restore(ckpt, model=self.model, optimizer=optimizer, scheduler=scheduler)
            start, self.counters = ckpt["step"], dict(ckpt["counters"])
            log.info("resuming from step %d of %d", start, self.steps)
            before = ckpt["extra"].get("precision")
            if before and before != self.precision:  # train.precision=auto on a device of another kind
                latest.problems.append(f"resumed in {self.precision} on this device; steps 1-{start} were trained "
                                       f"in {before}")
        if self.rank:  # its own random stream, not a copy of rank 0's (which restore has just set)
            saved = ckpt["extra"].get("rng_per_rank", []) if ckpt else []
            if len(saved) == self.world_size:
                checkpoint.set_rng_state(saved[self.rank])
            else:  # a fresh start, or a checkpoint written at another world size
                s = self._seed(start)
                random.seed(s)
                np.random.seed(s)
                torch.manual_seed(s)
        if self.rank == 0 and self.best_path is not None:
            latest.problems += checkpoint.remove_partial_writes(self.best_path)
            if start == 0:  # a fresh start: best weights of an attempt that left no checkpoint are stale
                Path(self.best_path).unlink(missing_ok=True)
                checkpoint.previous_path(self.best_path).unlink(missing_ok=True)
        if self.on_resume and self.rank == 0:
            self.on_resume(start, latest.problems)
        if self.counters.pop("eval_pending", None) == start:  # stopped before its evaluation: do it now
            self._evaluate(start)
        return start

    def _loader(self, start: int):
        """This rank's batches from step ``start`` on: a pure function of (seed, step), see :mod:`.stream`."""
        t, device = self.cfg, self.device
        own_loader = getattr(self.train_set, "train_loader", None)
        if own_loader is not None:  # a stream (shards) orders its own samples: the same contract as below
            return own_loader(batch_size=t.batch_size, total_steps=self.steps, seed=self.seed, start_step=start,
                              rank=self.rank, world_size=self.world_size, num_workers=self.num_workers,
                              collate_fn=self.collate_fn, pin_memory=device.type == "cuda")
        sampler = StreamSampler(len(self.train_set), t.batch_size, self.steps, seed=self.seed,
                                start_step=start, rank=self.rank, world_size=self.world_size)
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collate_fn,
                          num_workers=self.num_workers, pin_memory=device.type == "cuda",
                          # its own generator, so building the loader never draws from the global RNG
                          generator=torch.Generator().manual_seed(self._seed(start)))

    def _prepare(self, optimizer, scheduler, start: int) -> "_Training":
        """Loss, mixup, autocast, gradient accumulation and checkpointing, DDP and compile: what every step
        uses, with the loss window and timers as a resume left them."""
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        t, model, device = self.cfg, self.model, self.device
        mixup = Mixup(mixup_alpha=t.mixup, label_smoothing=t.label_smoothing, num_classes=self.num_classes) \
            if t.mixup > 0 else None
        loss_fn = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
        autocast = precision.autocast(device, self.precision)
        # Gradient accumulation: each rank's share of the global batch in `accum` equal micro-batches, their
        # mean losses scaled by 1/accum, so the summed gradient is the whole batch's; one update per step.
        accum = int(t.get("accum_steps", 1))
        if t.get("grad_checkpointing", False):  # recompute activations in backward: less memory, ~1/3 more compute
            model.set_grad_checkpointing(True)

        # DDP averages the gradients over ranks in backward: with equal shards of one global batch and a
        # per-rank mean loss, that is the full batch's gradient, so clipping below sees the global norm.
        ddp = DistributedDataParallel(model) if self.world_size > 1 else None
        net = ddp or model
        if self.compile:  # compiled around DDP, as torch supports it; checkpoints keep saving `model`
            net = torch.compile(net, backend=COMPILE_BACKEND)
        net.train()
        # The loss window since the last logged step survives a resume, so the first line logged after
        # it averages the same steps as in an uninterrupted run.
        window_loss = torch.tensor(float(self.counters.get("window_loss", 0.0)), device=device)
        window_n, window_t0 = int(self.counters.get("window_n", 0)), time.perf_counter()
        seg_t0 = time.perf_counter()
        bar = tqdm(total=self.steps, initial=start, disable=not self.progress or self.rank != 0,
                   desc="train", unit="step", dynamic_ncols=True, leave=False)
        return _Training(optimizer, scheduler, net, ddp, loss_fn, autocast, accum, mixup, bar, start,
                         window_loss, window_n, window_t0, seg_t0)

    def _step(self, state: "_Training", x, y) -> torch.Tensor:
        """One update on the batch ``(x, y)``; advances ``state.step`` and the loss window. Returns the
        gradient norm before clipping."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if state.mixup:  # on the whole batch, as without accumulation (one mixing draw per batch)
            x, y = state.mixup(x, y)
        state.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(state.net, state.loss_fn, state.autocast, x, y, state.accum, state.ddp)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
        state.optimizer.step()
        state.step += 1
        state.scheduler.step_update(num_updates=state.step)
        state.window_loss += loss.detach()
        state.window_n += 1
        state.bar.update(1)
        return grad_norm

    def _log(self, state: "_Training", grad_norm: torch.Tensor) -> None:
        """The mean loss of the window since the last logged step (every rank takes part), one metrics row
        on rank 0 (:attr:`on_log`); NonFiniteLoss when the run diverged. Starts the next window."""
        t, step = self.cfg, state.step
        now = time.perf_counter()
        train_loss = distributed.mean(state.window_loss / state.window_n).item()  # every rank takes part
        if not math.isfinite(train_loss):  # every rank sees the same mean, so all stop here
            raise NonFiniteLoss(f"non-finite training loss ({train_loss}) at step {step} "
                                f"(lr {state.optimizer.param_groups[0]['lr']:.3g}): the run diverged; "
                                "lower train.lr or raise train.warmup_steps")
        if self.rank == 0:
            row = {
                "step": step,
                "examples": step * t.batch_size,
                "epoch": step * t.batch_size / len(self.train_set),
                "train/loss": train_loss,
                "train/grad_norm": float(grad_norm),
                "train/lr": state.optimizer.param_groups[0]["lr"],
                "train/img_per_s": state.window_n * t.batch_size / (now - state.window_t0),
            }
            state.bar.set_postfix(loss=f"{train_loss:.3f}")
            self.on_log(row)
        state.window_loss.zero_()
        state.window_n, state.window_t0 = 0, time.perf_counter()

    def _checkpoint(self, state: "_Training") -> None:
        """Close the compute segment in the counters and write the checkpoint (rank 0; every rank's random
        state gathered when data parallel)."""
        step, now = state.step, time.perf_counter()
        self.counters["train_seconds"] += now - state.seg_t0
        # device-seconds per segment, so a job requeued on more or fewer ranks adds up right
        self.counters["device_seconds"] = self.counters.get("device_seconds", 0.0) + \
            (now - state.seg_t0) * self.world_size
        self.counters["examples"] = step * self.cfg.batch_size
        self.counters["window_loss"] = distributed.mean(state.window_loss).item()
        self.counters["window_n"] = state.window_n
        state.seg_t0 = now
        rngs = distributed.gather(checkpoint.rng_state()) if self.world_size > 1 else None
        if self.rank == 0:
            checkpoint.save(self.ckpt_path, model=self.model, optimizer=state.optimizer, scheduler=state.scheduler,
                            step=step, counters=self.counters,
                            extra={"precision": self.precision, **({"rng_per_rank": rngs} if rngs else {})})


@dataclass
class _Training:
    """What the steps of one :meth:`Loop.run` share: the update's parts and the loss window and timers."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    net: torch.nn.Module            # what trains: the model, or its DDP wrapper, or torch.compile of either
    ddp: DistributedDataParallel | None
    loss_fn: Callable
    autocast: object
    accum: int
    mixup: object | None
    bar: object
    step: int                       # updates done
    window_loss: torch.Tensor       # summed loss since the last logged step
    window_n: int
    window_t0: float
    seg_t0: float                   # start of the compute segment the next checkpoint closes
