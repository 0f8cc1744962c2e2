"""What keeps the training step off the host's critical path: device-side loss bookkeeping, compile.

Who uses it: ``trainer.train`` (:class:`LossWatch` every step, :func:`compile_step` once at setup,
:class:`CompileClock` to keep compile time out of the steady-state figures); the tests.

Why: a GPU step of ViT-B-32 at batch 256 is ~80 ms of ~1,600 kernels. Any ``.item()`` in the
step makes the host wait for the GPU to drain, and then the GPU waits for the host to issue the
next step's first kernels. So the step keeps the loss on the device: :class:`LossWatch` adds it to
a running sum and remembers, on the device, the first step whose loss was not finite. The loop
reads them (one sync) only at log steps, before every checkpoint and at each epoch's end, and
stops there with the same one-line verdict a per-step check gave, naming the step where the loss
first went non-finite. Weights a non-finite step touched are never written: every checkpoint is
preceded by a check.
"""

from __future__ import annotations

import logging
import time

import torch

from kubeclip.api import NonFiniteLoss

log = logging.getLogger("trainer")


def nonfinite_verdict(loss: float, step: int, epoch: int) -> NonFiniteLoss:
    """The one-line verdict of a run whose loss went non-finite at optimizer step ``step``."""
    return NonFiniteLoss(
        f"training: loss is {loss} at step {step} (epoch {epoch}); lower "
        "training.learningRate or set training.gradClipNorm"
    )


class LossWatch:
    """Loss bookkeeping on the device: the last loss, a running sum, the first non-finite step."""

    def __init__(self, device: torch.device):
        self.last = torch.full((), float("nan"), device=device)
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0  # steps summed into ``total`` (host-side: no sync to know it)
        self.bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: every loss finite so far
        self.bad_loss = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Record the loss of optimizer step ``step`` (1-based); no host sync."""
        loss = loss.detach().float()
        self.last = loss
        self.total += loss
        self.count += 1
        first_bad = torch.logical_and(~torch.isfinite(loss), self.bad_step == 0)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_loss = torch.where(first_bad, loss, self.bad_loss)

    def check(self, epoch: int) -> None:
        """Raise the run's :class:`NonFiniteLoss` verdict if any loss so far was not finite (one sync)."""
        step = int(self.bad_step)
        if step:
            raise nonfinite_verdict(float(self.bad_loss), step, epoch)

    def take_mean(self) -> float | None:
        """Mean loss since the last call (one sync), and start a new sum; None when no step ran."""
        if not self.count:
            return None
        mean = float(self.total) / self.count
        self.total.zero_()
        self.count = 0
        return mean


def compile_step(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` (the DDP-wrapped model: DDP's optimizer splits the graph at its
    gradient buckets, so the all-reduce still overlaps backward) or ``module`` itself.

    ``dynamic=False``: each text length bucket (``trainer.truncate``) gets its own static graph;
    with automatic dynamic shapes the second length would turn every graph symbolic.
    """
    if not enabled:
        return module
    import torch._dynamo

    # one graph per text bucket (5) plus the full length; room for a few more before falling back to eager
    for knob in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one torch still reads
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 16))
    # torch.compile(nn.Module) returns an OptimizedModule (an nn.Module); its annotation says Callable
    return torch.compile(module, dynamic=False)  # type: ignore[return-value]


class CompileClock:
    """Which steps compiled a new graph (a text length not seen before), and how long they took.

    Those steps are left out of the steady-state throughput; their time is reported as compile time.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seen: set[tuple] = set()
        self.seconds = 0.0
        self.graphs = 0
        self._t0 = 0.0
        self._pending: list[tuple] = []

    def start(self, shapes: list[tuple]) -> bool:
        """Call before a step with the input shapes of its forwards; True when this step compiles."""
        self._pending = [] if not self.enabled else sorted(set(shapes) - self.seen)
        if self._pending:
            self.seen.update(self._pending)
            self._t0 = time.perf_counter()
        return bool(self._pending)

    def stop(self, sync: bool) -> float | None:
        """After the step: its seconds if it compiled (synchronising the device first), else None."""
        if not self._pending:
            return None
        if sync:
            torch.cuda.synchronize()
        dt = time.perf_counter() - self._t0
        self.seconds += dt
        self.graphs += len(self._pending)
        log.info("compiled the step for input shapes %s: %.1fs (compile and first run)", self._pending, dt)
        self._pending = []
        return dt
