"""GPU memory of one training step, measured without a GPU, and the micro-batch plan of a cell.

    estimate(model_name, image_size, num_classes, micro_batch, *, batch=None, precision="bf16",
             optimizer="adamw", grad_checkpointing=False, ranks=1) -> Estimate
    plan_cell(model_name, image_size, num_classes, batch_size, ranks, gpu_memory_gb, *, precision="bf16",
              optimizer="adamw", what="", accum_steps=None, grad_checkpointing=None) -> CellPlan

:func:`estimate` is the peak of bytes allocated on one GPU during a steady-state training step of
:class:`mixer_scaling.engine.Loop` — what ``torch.cuda.max_memory_allocated()`` reports after such a step
(not the CUDA context, the cuDNN/cuBLAS workspaces outside torch's allocator, nor the allocator's
fragmentation, which :data:`SAFETY` leaves room for). It is measured, not modelled: the registry model is
built on fake tensors (``torch._subclasses.fake_tensor``: shapes and dtypes, no data, no compute) and one
step runs as the loop runs it (zero_grad, forward under autocast, cross-entropy, backward, gradient clipping,
the optimizer's step, with timm's own optimizer and activation checkpointing), while a dispatch mode
counts the bytes of every live tensor storage (rounded up to CUDA's 512-byte blocks) and records the peak.

Exactly as on a GPU:

* ``bf16`` is autocast. The fake tensors live on the CPU (autograd's engine needs a real device for CUDA
  tensors), so CPU autocast runs with CUDA's policy for the ops where the two differ and that these models
  use (layer/group norm and softmax in float32, :data:`CUDA_FP32_OPS`); the saved tensors then equal those of
  a fake-CUDA forward dtype for dtype (``tests/test_memory_plan.py``).
* Attention is timm's fused path (``scaled_dot_product_attention``): a flash kernel on the GPU, which saves
  no attention matrix.
* The step is a steady-state one: the optimizer state exists, and the previous step's gradients live until
  ``zero_grad``. With accumulation (``micro_batch < batch``) a later micro-batch is measured: the gradients
  of the earlier ones are live throughout its forward and backward.
* The whole per-rank batch is on the device (the loop moves it, then splits it): ``inputs``.
* Under DDP (``ranks > 1``) torch's gradient buckets hold one more float32 copy of the gradients:
  ``ddp_buckets`` (the only part computed, not measured: its size is the gradients').

Not measured: ``torch.compile`` (train.compile; eager kernels are measured), mixup's soft targets (a batch x
classes float32 tensor), the evaluation passes between steps. The optimizer and gradient clipping run
over all parameters at once (``foreach``), as torch does for CUDA tensors; AdamW's step counts stay on the
CPU there and are not counted.

Fast: a model is measured with at most three blocks per stack of identical blocks (:data:`REDUCED_DEPTH`;
the stacks :mod:`mixer_scaling.models.flops` uses), and each stack's other blocks are added as copies of
its second block: the bytes live at the peak that were allocated in that block's forward (forward hooks,
also when checkpointing recomputes it), and its parameters, gradients, optimizer state and the optimizer's
temporaries of them, but not the transients of its own backward, which one block at a time holds. Each phase
of the step (forward, backward, optimizer step) has its own peak, extrapolated on its own; the step's peak
is the largest of the three. One fake micro-batch is measured, a prime (:data:`MEASURED_BATCH`), so that
each storage splits into constant bytes and bytes per image; for every power of two up to 8192
(:data:`PROBES`) the moment of each phase's peak is found, which makes the estimate exact there, linear
between two of them (an upper bound: the peak is convex in the micro-batch), and linear beyond the last.
``tests/test_memory_plan.py`` checks both extrapolations against measurements of the full model at each
micro-batch, and the estimate against the real peak of a CPU step. Measurements are cached in the process
and on disk (:func:`cache_dir`), per (model, resolution, classes, precision, optimizer, checkpointing,
accumulation) and the versions of torch, timm and the measuring code: a model costs ~0.5 s the first time
(a BiT ~1-2 s), nothing after.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError, UserError

# Planning: a plan may use this fraction of the card. The rest is for what the estimate leaves out and a
# real GPU spends: the CUDA context and kernels (~0.5-1 GB), cuDNN/cuBLAS/NCCL workspaces, and the
# caching allocator's fragmentation (reserved minus allocated, typically a few percent).
SAFETY = 0.9
GB = 1e9  # resources.gpu_memory_gb is in GB (1e9 bytes): an "80 GB" card has 80 GiB, so the unit errs low
# The fake micro-batch of a measurement: a prime, so that the storages proportional to the micro-batch are
# exactly those whose element count it divides (fake tensors cost the same at any size).
MEASURED_BATCH = 1009
# Micro-batches at which each phase's peak moment is found: every power of two up to 8192.
PROBES = tuple(2 ** i for i in range(14))
# Blocks per stack in a measured copy; the second stands for the stack's others. Mixer and ViT: three, so
# that it sits between two of its kind; BiT: two (the next stage's first block follows it), which
# costs a third less time and errs high by under 2% (tests/test_memory_plan.py).
REDUCED_DEPTH = {"mixer": 3, "vit": 3, "bit": 2}
# Ops CUDA's autocast runs in float32 and CPU's autocast does not (CUDA: fp32 / fp32_set_opt_dtype lists).
CUDA_FP32_OPS = ("layer_norm", "native_layer_norm", "group_norm", "softmax.int")
PRECISIONS = ("bf16", "fp32")
_ALLOC_BLOCK = 512  # CUDA's caching allocator rounds every allocation up to this
_PARTS = ("weights", "grads", "optimizer_state", "activations")
_PHASES = ("forward", "backward", "optimizer step")
_LOCK = threading.Lock()  # one measurement at a time: it switches process-wide autocast state


@dataclass(frozen=True)
class Estimate:
    """Bytes on one GPU at the peak of a training step, by part; ``total`` is their sum.

    ``weights``: parameters (float32). ``grads``: gradients live at the peak (all of them at the optimizer
    step or when accumulating; during a first micro-batch's backward only those computed so far).
    ``optimizer_state``: e.g. AdamW's two float32 moments, momentum SGD's one buffer. ``activations``:
    everything else the step holds at its peak — saved activations, autocast's bf16 weight copies, autograd's
    and the optimizer's temporaries. ``inputs``: the per-rank batch on the device. ``ddp_buckets``: DDP's
    gradient buckets (0 for one rank). ``phase``: where the peak is (forward, backward, optimizer step).
    """

    weights: int
    grads: int
    optimizer_state: int
    activations: int
    inputs: int
    ddp_buckets: int
    phase: str

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer_state + self.activations + self.inputs + self.ddp_buckets

    @property
    def total_gb(self) -> float:
        return self.total / GB

    def parts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "phase"}


@dataclass(frozen=True)
class CellPlan:
    """How a cell's per-rank batch runs on its GPU: ``micro_batch`` x ``accum_steps`` = the per-rank batch."""

    micro_batch: int
    accum_steps: int
    grad_checkpointing: bool
    estimate_gb: float
    card_gb: float

    def overrides(self) -> list[str]:
        """The run-config overrides of this plan (both keys are not identity: run ids do not change)."""
        return [f"train.accum_steps={self.accum_steps}",
                f"train.grad_checkpointing={str(self.grad_checkpointing).lower()}"]

    def describe(self) -> str:
        """e.g. ``32 x 8 ckpt 44.9/80 GB``: micro-batch x accumulation steps, checkpointing, estimate/card."""
        ckpt = " ckpt" if self.grad_checkpointing else ""
        return f"{self.micro_batch} x {self.accum_steps}{ckpt} {self.estimate_gb:.1f}/{self.card_gb:g} GB"


# ---------------------------------------------------------------------------------------------
# Estimate
# ---------------------------------------------------------------------------------------------


def estimate(model_name: str, image_size: int, num_classes: int, micro_batch: int, *, batch: int | None = None,
             precision: str = "bf16", optimizer: str = "adamw", grad_checkpointing: bool = False,
             ranks: int = 1) -> Estimate:
    """Peak bytes on one GPU of a training step of registry model ``model_name`` (e.g. ``"vit/h14"``) at
    ``image_size`` with a ``num_classes`` head, forward and backward on ``micro_batch`` images at a time.

    ``batch``: the per-rank batch (train.batch_size / ranks; default ``micro_batch``), on the device in
    full and split into ``batch / micro_batch`` accumulation steps. ``precision``: ``bf16`` (autocast, as
    ``train.precision=auto`` on a GPU) or ``fp32``. ``optimizer``: a ``train.optimizer`` value (timm's).
    ``ranks`` > 1 adds DDP's gradient buckets. Compare ``total`` with ``torch.cuda.max_memory_allocated()``
    after a step of a run with these settings (see the module docstring for what it covers). The first call
    for a model and setting measures it (~0.5 s, a BiT ~2 s); later ones, at any micro-batch, are instant.
    Raises :class:`ConfigError` for a value that is not allowed.
    """
    from .engine import OPTIMIZERS
    from .models import check_image_size, get_spec

    spec = get_spec(model_name)
    batch = micro_batch if batch is None else batch
    for key, value in (("micro_batch", micro_batch), ("batch", batch), ("ranks", ranks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} is not allowed; expected an integer >= 1")
    if batch % micro_batch:
        raise ConfigError(f"micro_batch={micro_batch} does not divide the per-rank batch {batch}; allowed: a divisor")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not allowed; choose one of: {', '.join(PRECISIONS)}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer={optimizer!r} is not allowed; choose one of: {', '.join(OPTIMIZERS)}")
    image_size = check_image_size(spec, image_size)
    return _estimate(spec.name, image_size, int(num_classes), micro_batch, batch, precision, optimizer,
                     bool(grad_checkpointing), ranks, accumulating=micro_batch < batch)


def _estimate(name: str, image_size: int, num_classes: int, micro_batch: int, batch: int, precision: str,
              optimizer: str, ckpt: bool, ranks: int, accumulating: bool) -> Estimate:
    profile = _profile(name, image_size, num_classes, precision, optimizer, ckpt, accumulating)
    phase, parts = _peak(profile, micro_batch)
    inputs = _blocks(batch * 3 * image_size * image_size * 4) + _blocks(batch * 8)  # float32 images, int64 labels
    # DDP's buckets: one more copy of every gradient (all of them are live at the optimizer step)
    buckets = _peak({"optimizer step": profile["optimizer step"]}, 1)[1]["grads"] if ranks > 1 else 0
    return Estimate(**parts, inputs=inputs, ddp_buckets=buckets, phase=phase)


def _blocks(nbytes: float) -> int:
    return int(-(-nbytes // _ALLOC_BLOCK) * _ALLOC_BLOCK)


def _peak(profile: dict, b: int) -> tuple[str, dict[str, int]]:
    """(phase, bytes by part) of the step's peak at micro-batch ``b``: exact at a probe, else interpolated
    between the two probes around ``b`` (the peak is convex in ``b``, so this errs high), beyond the last
    probe extrapolated from its moment."""
    best = None
    for phase, probes in profile.items():
        at = {q: {p: c + s * b for p, (c, s) in probes[q].items()} for q in probes}
        if b in at:
            parts = at[b]
        else:
            lower = max((q for q in probes if q < b), default=None)
            upper = min((q for q in probes if q > b), default=None)
            if lower is None or upper is None:
                parts = at[upper if lower is None else lower]
            else:
                w = (b - lower) / (upper - lower)
                lo = {p: c + s * lower for p, (c, s) in probes[lower].items()}
                hi = {p: c + s * upper for p, (c, s) in probes[upper].items()}
                parts = {p: (1 - w) * lo[p] + w * hi[p] for p in lo}
        parts = {p: max(0, round(v)) for p, v in parts.items()}
        if best is None or sum(parts.values()) > sum(best[1].values()):
            best = (phase, parts)
    return best


@lru_cache(maxsize=None)
def _profile(name: str, image_size: int, num_classes: int, precision: str, optimizer: str, ckpt: bool,
             accumulating: bool, full_depth: bool = False) -> dict:
    """Per phase, per probe micro-batch, the (constant, per-image) bytes of each part at full depth; kept
    on disk too (:func:`cache_dir`), under the versions of torch and timm and the code that measures."""
    key = json.dumps([_code_version(), name, image_size, num_classes, precision, optimizer, ckpt, accumulating,
                      full_depth])
    path = cache_dir() / f"{hashlib.sha1(key.encode()).hexdigest()}.json"
    try:
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            return {phase: {int(q): {p: tuple(v) for p, v in parts.items()} for q, parts in probes.items()}
                    for phase, probes in stored["profile"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # not measured yet (or an unreadable file): measure
    profile = measure(name, image_size, num_classes, MEASURED_BATCH, precision=precision, optimizer=optimizer,
                      grad_checkpointing=ckpt, accumulating=accumulating, full_depth=full_depth)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "profile": profile}))
        os.replace(tmp, path)  # whole or not at all, whoever else writes it
    except OSError:
        pass  # a cache: a read-only home only makes the next launch measure again
    return profile


def cache_dir() -> Path:
    """Where measurements are kept: ``$MIXER_SCALING_CACHE/memory``, else ``~/.cache/mixer_scaling/memory``."""
    root = os.environ.get("MIXER_SCALING_CACHE") or Path.home() / ".cache" / "mixer_scaling"
    return Path(root) / "memory"


@lru_cache(maxsize=1)
def _code_version() -> str:
    """torch's and timm's versions and a hash of the code a measurement runs (this module, the models)."""
    from importlib.metadata import version

    import torch

    here = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for path in [Path(__file__).resolve(), *sorted((here / "models").glob("*.py"))]:
        digest.update(path.read_bytes())
    return f"torch {torch.__version__}, timm {version('timm')}, code {digest.hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def measure(name: str, image_size: int, num_classes: int, micro_batch: int, *, precision: str = "bf16",
            optimizer: str = "adamw", grad_checkpointing: bool = False, accumulating: bool = False,
            full_depth: bool = False) -> dict:
    """One fake training step at ``micro_batch``: per phase, per probe micro-batch (:data:`PROBES`), the
    bytes of each part (weights, grads, optimizer_state, activations) at the moment of the phase's peak for
    that probe, as (constant, per-image) pairs at full depth. A storage is per-image when ``micro_batch``
    (a prime, :data:`MEASURED_BATCH`) divides its element count; with another ``micro_batch`` every
    storage counts as constant and all probes share the one peak. ``full_depth`` builds every block instead
    of extrapolating from a depth-reduced copy (slow for large models; for tests)."""
    import torch

    from .models.flops import _stacks
    from .models.registry import build_from_spec, get_spec

    spec = get_spec(name)
    stacks = _stacks(spec)
    if not full_depth:
        spec = _reduced(spec)
    reduced = _stacks(spec)
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's and torch's notes about meta and fake devices
        with torch.device("meta"):
            model = build_from_spec(spec, num_classes, image_size)
        for m in model.modules():  # timm's fused attention, as on a GPU
            if hasattr(m, "fused_attn"):
                m.fused_attn = True
        rep = {path: model.get_submodule(f"{path}.1") for (path, depth) in reduced if depth >= 2}
        split = micro_batch if micro_batch == MEASURED_BATCH else None
        snapshots = _step(model, rep, image_size, micro_batch, split, precision, optimizer, grad_checkpointing,
                          accumulating)
    out = {}
    for phase, by_probe in snapshots.items():
        out[phase] = {}
        for q, live in by_probe.items():
            parts = {p: [0.0, 0.0] for p in _PARTS}
            for (part, tag), (c, s) in live.items():
                parts[part][0] += c
                parts[part][1] += s
            for (path, depth), (_, short) in zip(stacks, reduced):
                if path in rep and depth > short:  # the stack's other blocks, as copies of its second
                    for part in _PARTS:
                        c, s = live.get((part, path), (0, 0))
                        parts[part][0] += (depth - short) * c
                        parts[part][1] += (depth - short) * s
            out[phase][q] = {p: (c, s) for p, (c, s) in parts.items()}
    return out


def _reduced(spec):
    import dataclasses

    from .models.flops import _DEPTH_KEY, _stacks

    if not _stacks(spec):  # a timm architecture (model=timm): no stacks known, measured whole
        return spec
    depth, keep = spec.kwargs[_DEPTH_KEY[spec.family]], REDUCED_DEPTH[spec.family]
    short = tuple(min(int(d), keep) for d in depth) if spec.family == "bit" else min(int(depth), keep)
    return dataclasses.replace(spec, kwargs={**spec.kwargs, _DEPTH_KEY[spec.family]: short})


@contextmanager
def _cuda_autocast_policy():
    """CPU autocast with CUDA's float32 ops (:data:`CUDA_FP32_OPS`), for the duration of the block."""
    import torch

    exclude = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

    def fp32(op, optional_dtype: bool):
        def kernel(*args, **kwargs):
            with torch._C._ExcludeDispatchKeyGuard(exclude):
                if optional_dtype and (kwargs.get("dtype") is not None or (len(args) > 2 and args[2] is not None)):
                    return op(*args, **kwargs)  # CUDA's fp32_set_opt_dtype: a dtype given is kept
                args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16)
                        else a for a in args]
                return op(*args, **kwargs)
        return kernel

    lib = torch.library.Library("aten", "IMPL")
    try:
        for qualified in CUDA_FP32_OPS:
            base, _, overload = qualified.partition(".")
            op = getattr(getattr(torch.ops.aten, base), overload or "default")
            lib.impl(qualified, fp32(op, base == "softmax"), "AutocastCPU")
        yield
    finally:
        lib._destroy()


def _step(model, rep: dict, image_size: int, b: int, split: int | None, precision: str, optimizer: str,
          ckpt: bool, accumulating: bool) -> dict:
    """Run one steady-state step on fake tensors; per phase and probe, the live (constant, per-image)
    bytes by (part, representative block) at the probe's peak."""
    import torch
    from omegaconf import OmegaConf
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .engine import build_optimizer

    tracker = _Tracker(split)
    with FakeTensorMode():
        with tracker:
            model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype))
        owner = {}  # parameter -> the representative block it belongs to
        for path, block in rep.items():
            for p in block.parameters():
                owner[p] = path
        params = list(model.parameters())
        for p in params:
            tracker.assign(p, "weights", owner.get(p))
        if ckpt:
            model.set_grad_checkpointing(True)
        _tag_forward(model, tracker, rep)
        opt = build_optimizer(model, OmegaConf.create({"optimizer": optimizer, "betas": [0.9, 0.999], "lr": 1e-3,
                                                      "weight_decay": 0.05, "momentum": 0.9}))
        for group in opt.param_groups:  # torch's default for CUDA tensors: one kernel over all parameters
            if "foreach" in group:
                group["foreach"] = True
        with tracker:
            # the previous step: its gradients, and the optimizer state its step created
            for p in params:
                p.grad = torch.empty(p.shape, dtype=p.dtype)
            opt.step()
        for p in params:
            tracker.assign(p.grad, "grads", owner.get(p))
            for s in opt.state.get(p, {}).values():
                if isinstance(s, torch.Tensor) and s.dim() == 0:
                    tracker.forget(s)  # a step count: torch keeps it on the CPU unless capturable or fused
                elif isinstance(s, torch.Tensor):
                    tracker.assign(s, "optimizer_state", owner.get(p))
        x = torch.empty(b, 3, image_size, image_size)  # a view of the per-rank batch (counted as inputs)
        y = torch.zeros(b, dtype=torch.long)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        # CUDA's policy for the whole step: checkpointing recomputes forwards under autocast in backward
        with tracker, (_cuda_autocast_policy() if precision == "bf16" else nullcontext()):
            if not accumulating:
                opt.zero_grad(set_to_none=True)
            tracker.phase("forward")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(model(x), y)
            tracker.phase("backward")
            loss.backward()
            del loss
            for p in params:
                tracker.assign(p.grad, "grads", owner.get(p))
            tracker.phase("optimizer step")
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)  # as on CUDA
            opt.step()
            tracker.phase(None)
    return tracker.snapshots()


def _tag_forward(model, tracker, rep: dict) -> None:
    """Storages allocated inside a block's forward (also when checkpointing recomputes it) belong to that
    block: its path if it is a representative block, else to no block."""
    by_module = {id(block): path for path, block in rep.items()}
    for name, module in model.named_modules():
        parent, _, index = name.rpartition(".")
        if index.isdigit() and parent.rpartition(".")[2] == "blocks":  # blocks.i, stages.j.blocks.i
            tag = by_module.get(id(module))
            module.register_forward_pre_hook(lambda m, a, tag=tag: tracker.push(tag))
            # always: checkpointing stops a recomputation with an exception once it has what backward needs
            module.register_forward_hook(lambda m, a, o: tracker.pop(), always_call=True)


class _Tracker:
    """A dispatch mode counting the bytes of live tensor storages (rounded to CUDA's 512-byte blocks).

    Each storage has a part (weights, grads, optimizer_state; activations unless assigned), a block tag —
    the representative block it was allocated in (forward hooks), or else the tag of the first input of the
    op that made it that is not a gradient flowing through backward (so a block's backward temporaries are
    its own), element by element for the optimizer's foreach ops — and its bytes as (constant, per image):
    per image when ``split`` (the fake micro-batch) divides its element count. For each phase and probe
    micro-batch the moment of the largest live bytes is kept; :meth:`snapshots` replays the allocations to
    those moments."""

    def __init__(self, split: int | None):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.record(func, args, out)
                return out

        self.mode = Mode()
        self.split = split
        self.probes = PROBES if split else (1,)
        # storage key -> [constant bytes, per-image bytes, part, tag, anchored, copied with its block]
        self.info: dict[int, list] = {}
        self.events: list[tuple[list, int]] = []  # (info, +1 allocated / -1 freed)
        self.const = 0.0
        self.per_image = 0.0
        self.stack: list = []
        self.current: str | None = None
        self.best: dict[str, dict[int, tuple[float, int]]] = {}  # phase -> probe -> (bytes, events so far)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def push(self, tag) -> None:
        self.stack.append(tag)

    def pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def phase(self, name: str | None) -> None:
        self.current = name
        if name is not None:
            self.best[name] = {q: (-1.0, 0) for q in self.probes}
            self._update()

    def assign(self, t, part: str, tag) -> None:
        """``t``'s storage is ``part`` (constant bytes) of block ``tag`` from now on, and in the replay."""
        if t is None:
            return
        info = self.info.get(t.untyped_storage()._cdata)
        if info is None:
            return
        self.const -= info[0]
        self.per_image -= info[1]
        info[0], info[1] = float(_blocks(info[0] + info[1] * (self.split or 0))), 0.0
        info[2], info[3], info[4], info[5] = part, tag, True, True
        self.const += info[0]

    def forget(self, t) -> None:
        """``t``'s storage is not on the GPU: not counted from now on, nor in the replay."""
        info = self.info.get(t.untyped_storage()._cdata)
        if info is not None:
            self.const -= info[0]
            self.per_image -= info[1]
            info[0] = info[1] = 0.0

    def _tag_of(self, tensors) -> object:
        fallback = None
        for t in tensors:
            info = self.info.get(t.untyped_storage()._cdata)
            if info is None:
                continue
            if info[4]:
                return info[3]
            if fallback is None:
                fallback = info[3]
        return fallback

    def record(self, func, args, out) -> None:
        import torch

        outs = out if isinstance(out, (list, tuple)) else (out,)
        foreach = func.__name__.startswith("_foreach_")
        first_list = next((a for a in args if isinstance(a, (list, tuple)) and len(a) == len(outs)), None)
        flat_in = None
        for i, t in enumerate(outs):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st._cdata
            if key in self.info:
                continue
            if self.stack:
                tag, anchored = self.stack[-1], True
            else:
                if foreach and first_list is not None and isinstance(first_list[i], torch.Tensor):
                    tag = self._tag_of([first_list[i]])
                else:
                    if flat_in is None:
                        flat_in = [a for a in _flatten(args) if isinstance(a, torch.Tensor)]
                    tag = self._tag_of(flat_in)
                anchored = self.current != "backward"
            nbytes = st.nbytes()
            if self.split and nbytes and nbytes % self.split == 0:  # (item sizes 1-8 are prime to it)
                info = [0.0, nbytes / self.split, "activations", tag, anchored, self.current != "backward"]
            else:
                info = [float(_blocks(nbytes)), 0.0, "activations", tag, anchored, self.current != "backward"]
            self.info[key] = info
            self.const += info[0]
            self.per_image += info[1]
            self.events.append((info, 1))
            weakref.finalize(st, self._free, key)
        self._update()

    def _update(self) -> None:
        if self.current is None:
            return
        best = self.best[self.current]
        n = len(self.events)
        for q, (v, _) in best.items():
            now = self.const + self.per_image * q
            if now > v:
                best[q] = (now, n)

    def _free(self, key) -> None:
        info = self.info.pop(key, None)
        if info is not None:
            self.const -= info[0]
            self.per_image -= info[1]
            self.events.append((info, -1))

    def snapshots(self) -> dict:
        """phase -> probe -> {(part, tag): (constant, per-image)} live at that probe's peak moment."""
        wanted: dict[int, list] = {}
        for phase, by_probe in self.best.items():
            for q, (_, n) in by_probe.items():
                wanted.setdefault(n, []).append((phase, q))
        out: dict = {phase: {} for phase in self.best}
        live: dict[int, list] = {}
        for n in range(len(self.events) + 1):
            for phase, q in wanted.get(n, ()):
                snap: dict = {}
                for info in live.values():
                    # a block's backward temporaries (recomputed activations, gradients flowing through it)
                    # live while that one block runs backward: never copied to the stack's other blocks
                    key = (info[2], info[3] if info[5] else None)
                    c, s = snap.get(key, (0.0, 0.0))
                    snap[key] = (c + info[0], s + info[1])
                out[phase][q] = snap
            if n < len(self.events):
                info, sign = self.events[n]
                if sign > 0:
                    live[id(info)] = info
                else:
                    live.pop(id(info), None)
        return out


def _flatten(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flatten(a)
        else:
            yield a


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


def plan_cell(model_name: str, image_size: int, num_classes: int, batch_size: int, ranks: int,
              gpu_memory_gb: float, *, precision: str = "bf16", optimizer: str = "adamw", what: str = "",
              accum_steps: int | None = None, grad_checkpointing: bool | None = None) -> CellPlan:
    """How a cell runs on its preset: the largest micro-batch (a divisor of the per-rank batch
    ``batch_size / ranks``) whose :func:`estimate` fits in :data:`SAFETY` of ``gpu_memory_gb``, without
    activation checkpointing if one does, else with it. ``accum_steps`` / ``grad_checkpointing`` that the
    user set are kept and only checked. ``precision`` is ``train.precision`` (``auto`` is bf16 on these
    GPUs). Raises :class:`UserError` in one line naming ``what`` (the cell) and the model when nothing
    fits, or the user's settings do not."""
    from .models import check_image_size, get_spec

    spec = get_spec(model_name)
    image_size = check_image_size(spec, image_size)
    precision = "fp32" if precision == "fp32" else "bf16"  # auto: bf16 on an A100/H100-class card
    per_rank = batch_size // ranks
    budget = SAFETY * gpu_memory_gb * GB
    label = f"{what}: {model_name}" if what else model_name

    def est(micro: int, ckpt: bool, accumulating: bool | None = None) -> Estimate:
        acc = micro < per_rank if accumulating is None else accumulating
        return _estimate(spec.name, image_size, int(num_classes), micro, per_rank, precision, optimizer, ckpt,
                         ranks, acc)

    def fits(micro: int, ckpt: bool) -> Estimate | None:
        if micro == per_rank:
            # A whole-batch step is measured only when it may fit: it holds at least an accumulating
            # step's bytes less the gradients, which that one holds throughout.
            if est(micro, ckpt, accumulating=True).total - est(1, ckpt, accumulating=True).grads > budget:
                return None
        e = est(micro, ckpt)
        return e if e.total <= budget else None

    if accum_steps is not None:
        if per_rank % accum_steps:
            raise ConfigError(f"train.accum_steps={accum_steps} does not divide the per-rank batch {per_rank} "
                              f"(train.batch_size={batch_size} over {ranks} ranks) of {label}; allowed: a divisor "
                              f"of {per_rank}")
        micros = [per_rank // accum_steps]
    else:
        micros = [d for d in range(per_rank, 0, -1) if per_rank % d == 0]
    for ckpt in ([grad_checkpointing] if grad_checkpointing is not None else [False, True]):
        # the estimate grows with the micro-batch: bisect the divisors (descending) for the largest that fits
        lo, hi, best = 0, len(micros), None
        while lo < hi:
            mid = (lo + hi) // 2
            e = fits(micros[mid], ckpt)
            if e is not None:
                best, hi = (micros[mid], e), mid
            else:
                lo = mid + 1
        if best is not None:
            micro, e = best
            return CellPlan(micro, per_rank // micro, ckpt, e.total / GB, float(gpu_memory_gb))
    micro = micros[-1]
    # the least it could take (at a micro-batch of 1 or 2 checkpointing may cost more than it saves)
    choices = [grad_checkpointing] if grad_checkpointing is not None else [False, True]
    e, ckpt = min(((est(micro, c), c) for c in choices), key=lambda pair: pair[0].total)
    given = [f"train.accum_steps={accum_steps}"] if accum_steps is not None else []
    if grad_checkpointing is not None:
        given.append(f"train.grad_checkpointing={str(grad_checkpointing).lower()}")
    setting = " ".join(given) or f"micro-batch {micro} {'with' if ckpt else 'without'} activation checkpointing"
    fix = ("leave train.accum_steps and train.grad_checkpointing to the planner, or " if given else "") + \
        "choose a larger preset (resources=<preset>) or a card with more memory"
    raise UserError(f"{label} does not fit in GPU memory: {setting} needs ~{e.total / GB:.1f} GB per GPU "
                    f"(micro-batch {micro} of a per-rank batch of {per_rank}), over {SAFETY:.0%} of the "
                    f"preset's {gpu_memory_gb:g} GB (resources.gpu_memory_gb); {fix}")
