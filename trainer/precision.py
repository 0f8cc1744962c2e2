"""``spec.training.precision`` on this device: what it means, and whether the device can run it.

Who uses it: ``trainer.train`` (the model dtype, the autocast context and the gradient scaler of a
run), ``python -m trainer`` and ``kubeclip run`` (:func:`refusal`, before any process trains),
``trainer.evaluate`` and ``trainer.zeroshot`` (:func:`input_dtype`: a pure ``bf16``/``fp16`` model
takes its images in its own dtype; a bf16 conv given fp32 input raises), ``hack/gpu_precisions.py``.

The modes (open_clip_train's ``--precision`` names):

========== ========================== ============================== ==========
mode       weights and optimizer      forward / backward             devices
========== ========================== ============================== ==========
fp32       fp32                       fp32                           CPU, GPU
amp_bf16   fp32                       autocast bf16                  CPU, GPU with bf16
amp        fp32                       autocast fp16, GradScaler      GPU
amp_fp16   (the same as amp)
bf16       bf16                       bf16                           CPU, GPU with bf16
fp16       fp16                       fp16                           GPU
========== ========================== ============================== ==========

A mode a device cannot run is refused with one line naming the field (exit 2, as a bad config):
the CPU has no fp16 kernels for every layer a CLIP uses and autocast-fp16 there is not faster
than fp32, so running it anyway would silently train a different model than the one asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

#: Modes that need an fp16-capable GPU.
GPU_ONLY = frozenset({"fp16", "amp", "amp_fp16"})
#: Modes that compute in bf16 (refused on a GPU without bf16, e.g. before Ampere).
BF16 = frozenset({"bf16", "amp_bf16"})


def refusal(precision: str, cuda: bool, cuda_bf16: bool = True) -> str | None:
    """One line saying why ``precision`` cannot run here, or None when it can."""
    if not cuda and precision in GPU_ONLY:
        return (
            f"spec.training.precision {precision}: needs a CUDA GPU (this process sees none); "
            "on CPU use fp32, bf16 or amp_bf16"
        )
    if cuda and not cuda_bf16 and precision in BF16:
        return f"spec.training.precision {precision}: this GPU has no bf16 support; use amp (fp16) or fp32"
    return None


def device_refusal(precision: str) -> str | None:
    """:func:`refusal` for the device this process would train on."""
    cuda = torch.cuda.is_available()
    return refusal(precision, cuda, cuda and torch.cuda.is_bf16_supported())


def setup(precision: str, device: torch.device) -> tuple[torch.dtype, Callable[[], Any], bool]:
    """``(model dtype, autocast factory, needs a GradScaler)`` of ``precision`` on ``device``.

    Call :func:`refusal` first: a mode the device cannot run is not turned into another one here.
    """
    dev = device.type
    if precision == "bf16":
        return torch.bfloat16, contextlib.nullcontext, False
    if precision == "fp16":
        return torch.float16, contextlib.nullcontext, False
    if precision == "amp_bf16":
        return torch.float32, lambda: torch.autocast(dev, dtype=torch.bfloat16), False
    if precision in ("amp", "amp_fp16"):
        return torch.float32, lambda: torch.autocast(dev, dtype=torch.float16), True
    return torch.float32, contextlib.nullcontext, False


def describe(precision: str, device: torch.device) -> str:
    """For the start-up log line: ``amp_bf16 (fp32 weights, autocast bf16 on cpu)``."""
    dtype, _, scaler = setup(precision, device)
    weights = str(dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
    weights = weights.replace("float16", "fp16")
    if precision.startswith("amp"):
        how = f"autocast {'bf16' if precision == 'amp_bf16' else 'fp16'} on {device.type}"
        return f"{precision} ({weights} weights, {how}{', GradScaler' if scaler else ''})"
    return f"{precision} ({weights} weights and compute)"


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the image tower's weights are in: images go in as that (fp32 under autocast)."""
    for p in getattr(model, "visual", model).parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
