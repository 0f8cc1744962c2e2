"""AdamW and the cosine-with-warmup learning-rate schedule, kept small and checkpointable.

Who uses it: ``trainer.train``.

Why not ``torch.optim.AdamW``: its ``step()`` imports ``torch._dynamo`` on first call (seconds of
imports on a small machine, see ``trainer.model``), and nothing here needs its extra modes.
This is the decoupled-weight-decay Adam of Loshchilov & Hutter, computed by the same one-pass
kernel ``torch.optim.AdamW(fused=True)`` calls (``torch._fused_adamw_``, CPU and CUDA; about 5x
faster on CPU than the default multi-pass update), with a ``_foreach`` version as the fallback
for dtypes/devices the kernel refuses. ``tests/unit/test_optim.py`` checks it against
``torch.optim.AdamW``. The schedule is a pure function of the optimizer
step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

import torch


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


class AdamW:
    """``groups``: list of ``{"params": [...], "weight_decay": float}``; ``lr`` is set per step."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.98), eps: float = 1e-6):
        # betas/eps: CLIP's fine-tuning values (open_clip_train uses the same for ViTs).
        self.param_groups = [dict(g, lr=0.0) for g in groups if g["params"]]
        self.betas, self.eps = betas, eps
        self.step_count = 0
        self.fused = True
        self.exp_avg = [[torch.zeros_like(p, memory_format=torch.preserve_format) for p in g["params"]] for g in self.param_groups]
        self.exp_avg_sq = [[torch.zeros_like(p, memory_format=torch.preserve_format) for p in g["params"]] for g in self.param_groups]

    def set_lr(self, lr: float) -> None:
        for g in self.param_groups:
            g["lr"] = lr

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        for g, m, v in zip(self.param_groups, self.exp_avg, self.exp_avg_sq):
            idx = [i for i, p in enumerate(g["params"]) if p.grad is not None]
            if not idx:
                continue
            ps = [g["params"][i] for i in idx]
            gs = [p.grad for p in ps]
            ms = [m[i] for i in idx]
            vs = [v[i] for i in idx]
            if self.fused:
                # The kernel counts steps in per-parameter tensors; all share self.step_count.
                steps = [torch.full((), float(self.step_count), device=p.device) for p in ps]
                try:
                    torch._fused_adamw_(ps, gs, ms, vs, [], steps, amsgrad=False, lr=g["lr"], beta1=b1, beta2=b2,
                                        weight_decay=g["weight_decay"], eps=self.eps, maximize=False)
                    continue
                except (RuntimeError, NotImplementedError):
                    self.fused = False  # e.g. a dtype the kernel lacks: the multi-pass version below
            self._foreach_step(g, ps, gs, ms, vs)

    def _foreach_step(self, g, ps, gs, ms, vs) -> None:
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.step_count
        bc2_sqrt = math.sqrt(1 - b2 ** self.step_count)
        if g["weight_decay"]:
            torch._foreach_mul_(ps, 1 - g["lr"] * g["weight_decay"])
        torch._foreach_lerp_(ms, gs, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, ms, denom, -g["lr"] / bc1)

    def state_dict(self) -> dict:
        return {"step": self.step_count, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        for dst, src in ((self.exp_avg, state["exp_avg"]), (self.exp_avg_sq, state["exp_avg_sq"])):
            if [len(x) for x in dst] != [len(x) for x in src]:
                raise ValueError("optimizer state does not match the model's trainable parameters")
            for d_group, s_group in zip(dst, src):
                for d, s in zip(d_group, s_group):
                    d.copy_(s)
