"""Stop at a step boundary on SIGTERM or SIGINT, all ranks at the same step, after a checkpoint.

Who uses it: ``trainer.train`` (:class:`StopRequest`, asked at every step boundary), ``python -m
trainer`` (turns :class:`Preempted` into exit code ``128 + signal``).

Why: an eviction, a Kueue preemption, a node drain or ``kubectl delete pod`` gives the pod its
``terminationGracePeriodSeconds`` (``spec.terminationGracePeriodSeconds``) between SIGTERM and
SIGKILL; ``kubeclip run`` gets SIGINT on Ctrl-C or SIGTERM from a container runtime. In every case
torchrun's agent (or ``kubeclip run``'s) forwards the signal to each rank and waits for them (the
pods set ``PET_SHUTDOWN_TIMEOUT`` to the grace period). A rank that gets it only sets a flag and
finishes the step it is in; at the next step boundary the ranks agree (one all-reduce of the flag,
MAX), rank 0 writes a checkpoint at that step, and every rank raises :class:`Preempted`. The
restarted run resumes at the step after the signal instead of at the last periodic checkpoint.

Agreement matters: a rank that stopped alone would leave the others blocked in the next step's
gradient all-reduce until the collective timeout. The flag travels over a gloo (CPU) group of its
own, so on GPUs the check never waits for the CUDA stream, and asynchronously: the all-reduce
started at one step boundary is read at the next, so the loop never waits for it (a synchronous
one cost 0.2-0.8 ms per step on CPU, BENCHMARKS.md) and the ranks stop one step after the signal.
A second signal to a rank stops it at once (exit ``128 + signal``, no checkpoint), as people
expect from a second Ctrl-C.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

log = logging.getLogger("trainer")

#: The signals that ask for a checkpoint and a clean stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: After a stop signal, a rank that has not reached the ranks' agreement within this many seconds
#: plus three of its longest steps so far exits without a checkpoint (a peer died, or a long eval
#: runs): the time the pre-signal behaviour would have taken, bounded.
WATCHDOG_MIN_S = float(os.environ.get("KUBECLIP_STOP_WATCHDOG_S", "60"))


class Preempted(Exception):
    """The run stopped at a step boundary on a signal, after rank 0 wrote a checkpoint there;
    ``python -m trainer`` exits ``128 + signum`` (the shell's code for "killed by that signal")."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name if signum else "a peer's signal"
        super().__init__(
            f"stopped by {name} at step {step}: checkpoint {checkpoint} written; "
            "the same command (or the next attempt) resumes there"
        )

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)


def _ignore_stop_signals(init: Callable[[int], None] | None, worker_id: int) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if init is not None:
        init(worker_id)


def shield_workers(loader: Any) -> None:
    """Make the data-loader workers of ``loader`` (a DataLoader, or a wrapper holding one as
    ``.loader``) ignore SIGTERM/SIGINT. torchrun's agent signals each rank's whole process group,
    loader workers included, and torch's worker handler dies on a SIGTERM that its parent did not
    send; the rank would then fail its step ("DataLoader worker ... killed by signal") instead of
    writing the checkpoint. The rank decides when they stop (it shuts them down on exit; a worker
    whose rank died exits by torch's own parent watchdog)."""
    dl = loader if isinstance(loader, DataLoader) else getattr(loader, "loader", None)
    if isinstance(dl, DataLoader) and dl.num_workers > 0:
        dl.worker_init_fn = functools.partial(_ignore_stop_signals, dl.worker_init_fn)
        _kill_workers_at_exit()


@functools.cache
def _kill_workers_at_exit() -> None:
    """Once per process: at interpreter exit, SIGKILL the loader workers still alive. A worker that
    ignores SIGTERM also ignores multiprocessing's exit-time ``terminate()`` of daemonic children,
    which then joins it forever: a rank that raised (e.g. a ``DataError`` from a worker) would hang
    instead of exiting with its code. Registered after multiprocessing's own hook, so it runs first
    (atexit is last-in, first-out); the workers hold no state worth a graceful stop."""

    def kill() -> None:
        for child in multiprocessing.active_children():
            child.kill()

    atexit.register(kill)


def _own_group() -> dist.ProcessGroup:
    """A new gloo group of all ranks (torch types a group this rank is not in as an int: not here)."""
    group = dist.new_group(backend="gloo")
    if not isinstance(group, dist.ProcessGroup):
        raise RuntimeError("this rank is not a member of a process group of all ranks")
    return group


class StopRequest:
    """Installs the SIGTERM/SIGINT handlers of this rank; :meth:`agreed` is the step-boundary check.

    Build it on every rank right after the process group exists (it creates a collective group)
    and before loader workers are forked: they inherit the handler, so a signal sent to a whole
    process group does not kill them under the rank (which would fail its checkpoint).
    """

    def __init__(self, world: int):
        self.signum = 0  # the first stop signal this rank received, 0: none
        self.world = world
        # A gloo group of its own: on GPUs the check never waits for the CUDA stream (NCCL would),
        # and its all-reduces never interleave with the loop's collectives.
        self.group = _own_group() if world > 1 else None
        self._sent = torch.zeros(1, dtype=torch.int32)  # this boundary's flag, being reduced
        self._work: Any = None  # the all-reduce started at the previous boundary
        self._last_boundary: float | None = None
        self.longest_step = 0.0  # the longest time between two step boundaries (an epoch-end eval included)
        self._agreed = threading.Event()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        self._watch_signals()

    def _watch_signals(self) -> None:
        """The watchdog: a thread woken by the signal itself (the wakeup fd the C-level handler
        writes to), even while the main thread sits in a collective whose peer died (there the
        Python handler would not run until SIGKILL: torchrun's agent also sends SIGTERM to the
        survivors of a crashed rank). If the ranks have not agreed to stop within
        :data:`WATCHDOG_MIN_S` plus three of the longest steps, the rank exits ``128 + signal``
        at once, as it would have without a handler."""
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w)
        threading.Thread(target=self._watchdog, args=(r,), name="kubeclip-stop-watchdog", daemon=True).start()

    def _watchdog(self, fd: int) -> None:
        while True:
            data = os.read(fd, 512)
            stops = [b for b in data if b in (int(s) for s in STOP_SIGNALS)]
            if stops:
                break
        deadline = WATCHDOG_MIN_S + 3 * self.longest_step
        if not self._agreed.wait(deadline):
            os.write(
                2, f"no step boundary within {deadline:.0f}s of the signal: stopping without a checkpoint\n".encode()
            )
            os._exit(128 + stops[0])

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:  # the second signal: stop now
            os._exit(128 + signum)
        self.signum = signum
        log.warning("%s received: stopping after this step with a checkpoint", signal.Signals(signum).name)

    def agreed(self) -> int:
        """The signal every rank stops on (0: go on); the same answer on every rank at this step.

        With several ranks the answer is the all-reduce (MAX) of the flags the ranks had at the
        *previous* boundary, started then and finished in the background while this step ran: the
        check costs no wait, and a signal stops the run one step later than it could.
        """
        now = time.monotonic()
        if self._last_boundary is not None:
            self.longest_step = max(self.longest_step, now - self._last_boundary)
        self._last_boundary = now
        if self.world == 1:
            if self.signum:
                self._agreed.set()
            return self.signum
        agreed = 0
        if self._work is not None:
            self._work.wait()
            agreed = int(self._sent.item())
        if agreed:
            self._work = None
            self._agreed.set()  # every rank got here: the checkpoint follows (the agent's timeout bounds it)
            return agreed
        self._sent.fill_(self.signum)
        self._work = dist.all_reduce(self._sent, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return 0

    def close(self) -> None:
        """Finish the all-reduce in flight (before the process group goes)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
