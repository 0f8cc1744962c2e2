"""The optimizer (``torch.optim.AdamW``) and the cosine-with-warmup learning-rate schedule.

Who uses it: ``trainer.train`` (builds the optimizer once, sets the learning rate every step).

AdamW is torch's own, with ``fused=True`` where torch has the one-pass kernel for the device
(CUDA and CPU): one kernel launch per parameter group instead of several passes over every
tensor. Parameters are split by :func:`trainer.model.param_groups` (no weight decay on norms,
biases, embeddings, logit scale/bias). The schedule is a pure function of the optimizer step, so
resuming needs only the step number and the optimizer's own ``state_dict``.
"""

from __future__ import annotations

import math

import torch

#: CLIP's fine-tuning betas/eps (open_clip_train uses the same for ViTs).
BETAS = (0.9, 0.98)
EPS = 1e-6


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def default_warmup(total_steps: int) -> int:
    """5% of all optimizer steps (at least 1): open_clip_train's fixed 10000 suits pre-training only."""
    return max(1, round(0.05 * total_steps))


def fused_supported(device: torch.device) -> bool:
    """torch ships a fused AdamW kernel for CUDA and CPU; other devices get the foreach version."""
    return device.type in ("cuda", "cpu")


def adamw(groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    """``groups``: ``[{"params": [...], "weight_decay": float}, ...]`` (empty groups are dropped)."""
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=0.0, betas=BETAS, eps=EPS, fused=fused_supported(device))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
