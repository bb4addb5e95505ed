"""Numeric precision of a run: ``train.precision`` = ``auto``, ``bf16`` or ``fp32``.

``bf16`` is autocast to bfloat16 (weights, optimizer state and the loss reduction stay float32), on
CUDA and on CPU alike; evaluation (validation top-1, few-shot features, throughput) follows the
training precision. ``auto`` is bf16 wherever the device computes it natively (a GPU with bf16, a CPU
with AVX512-BF16 or AMX) and fp32 elsewhere, so every recipe runs on any machine at its best speed;
the record's ``precision`` says which one a run used. ``bf16`` is refused, in one line, on a device
that would only emulate it (slower than fp32).

How fast a device computes a run (not part of its identity; each resolved value is in the record under
its own name): ``train.tf32`` lets fp32 matrix products and convolutions on CUDA use TF32, which rounds
their inputs to a 10-bit mantissa (:func:`tf32`, :func:`set_tf32`); ``train.channels_last`` stores a
model's weights channels-last (:func:`channels_last`; ``auto``: for the convolutional family, BiT, on
CUDA, where cuDNN convolves that layout faster; inputs stay NCHW, the convolutions carry the layout on);
``train.compile`` is :mod:`mixer_scaling.engine`'s.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import torch

from .errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")
CHANNELS_LAST = ("auto", True, False)
# x86 flags of native bf16 matrix products (Linux /proc/cpuinfo names); arm64: "bf16".
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (read from /proc/cpuinfo; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & _CPU_BF16_FLAGS)


def device_has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":  # emulated bf16 (pre-Ampere GPUs) counts as no bf16
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve(precision: str, device: torch.device, has_bf16: bool | None = None) -> str:
    """``bf16`` or ``fp32``: what a run with ``train.precision=precision`` computes in on ``device``.

    ``has_bf16`` (default: asked of the device) says whether the device runs bf16 natively.
    Raises :class:`UserError` for an unknown value or bf16 on a device without it.
    """
    if precision not in PRECISIONS:
        raise UserError(f"train.precision={precision!r} is not allowed; choose one of: {', '.join(PRECISIONS)}")
    native = device_has_bf16(device) if has_bf16 is None else has_bf16
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if native else "fp32"
    if not native:
        what = "GPU" if device.type == "cuda" else "CPU (no AVX512-BF16 or AMX)"
        raise UserError(f"train.precision=bf16 is not allowed on this {what}: it has no native bf16 and would "
                        f"only emulate it; use train.precision=fp32 or auto")
    return "bf16"


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (``bf16`` or ``fp32``) on ``device``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def tf32(option: bool, device: torch.device, precision: str) -> bool:
    """Whether a run computes its fp32 matrix products in TF32: ``train.tf32`` on CUDA in an fp32 run (a
    bf16 run's products are bf16; CPUs have no TF32)."""
    if not isinstance(option, bool):
        raise UserError(f"train.tf32={option!r} is not allowed; choose one of: true, false")
    return option and device.type == "cuda" and precision == "fp32"


def set_tf32(device: torch.device, on: bool) -> None:
    """Let CUDA's fp32 matrix products and cuDNN's convolutions use TF32, or not (process-wide; cuDNN
    allows it by default, so an fp32 run without it turns it off). Nothing on other devices."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def channels_last(option, family: str, device: torch.device) -> bool:
    """``train.channels_last`` resolved for a model of ``family`` on ``device``: ``auto`` is on for the
    convolutional families (``convolutional`` in :data:`.models.families.FAMILIES`) on CUDA, off elsewhere."""
    if not any(option == o and type(option) is type(o) for o in CHANNELS_LAST):
        raise UserError(f"train.channels_last={option!r} is not allowed; choose one of: auto, true, false")
    if option == "auto":
        from .models.families import is_convolutional

        return device.type == "cuda" and is_convolutional(family)
    return option


@contextmanager
def cpu_attention(device: torch.device):
    """Build models inside this as runs do on ``device``: on the CPU with timm's fused attention off
    (torch's fused kernel is slower there than timm's explicit attention, much slower in bf16; both
    compute the same function, and timm reads the switch when it builds a model). The switch is
    restored on exit, so whatever is built afterwards in the process gets timm's default."""
    if device.type != "cpu":
        yield
        return
    from timm.layers import set_fused_attn, use_fused_attn

    was, was_experimental = use_fused_attn(), use_fused_attn(experimental=True)
    set_fused_attn(False)
    try:
        yield
    finally:
        set_fused_attn(was, experimental=was_experimental)
