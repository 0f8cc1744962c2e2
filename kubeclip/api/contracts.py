"""What the trainer reports back to the controller: exit codes, its final verdicts, the
termination log, the rendezvous port (docs/contracts.md).

Who uses it: the trainer exits with these codes and raises the verdicts; the controller's
``plan()`` reads the codes from pod status and decides retry or final failure from them.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from .status import Reason

if TYPE_CHECKING:
    from .progress import Progress

#: Exit code of a bad config (unknown key, wrong type): retrying cannot help.
EXIT_CONFIG = 2
#: Exit code of a failed dataset preflight (wrong separator, missing images, ...): not retryable.
EXIT_PREFLIGHT = 3
#: Exit code of a loss that became NaN/inf: the same data and seed diverge again, not retryable.
EXIT_NONFINITE = 4
#: Exit code of a checkpoint that cannot resume this config (a field that breaks resume changed).
EXIT_CHECKPOINT_MISMATCH = 5
#: Exit code of a rendezvous that timed out (node 0 never reachable, a node never joined):
#: retryable, the next attempt may find all nodes scheduled.
EXIT_RENDEZVOUS_TIMEOUT = 6
#: Exit code of an output directory that another job owns (its marker file): not retryable; set
#: ``spec.output.takeOver`` to take it over on purpose.
EXIT_OUTPUT_IN_USE = 7
#: Exit code of checkpoints that exist but none of which can be read: the same files fail the same
#: way on a retry (move them away to start over).
EXIT_CHECKPOINT_UNREADABLE = 8
#: Exit code of a dataset row that cannot be used (an image that does not decode, outside the
#: preflight's sample): the same row comes back on a retry.
EXIT_DATA = 9
#: A process killed by signal N exits with ``SIGNAL_EXIT_BASE + N`` (the shell's rule): ``trainer.node``
#: exits so for a worker killed by a signal, and Kubernetes reports a container killed so the same way.
SIGNAL_EXIT_BASE = 128


def signal_name(signum: int) -> str:
    """The name of signal ``signum`` (``SIGKILL``), or ``signal N`` for a number this platform does
    not name; for messages about a process killed by it (exit code ``SIGNAL_EXIT_BASE + signum``)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


#: The exit codes that are the trainer's own final verdicts: the controller never retries them.
FINAL_EXIT_CODES = {
    EXIT_CONFIG: Reason.INVALID_CONFIG,
    EXIT_PREFLIGHT: Reason.PREFLIGHT_FAILED,
    EXIT_NONFINITE: Reason.NON_FINITE_LOSS,
    EXIT_CHECKPOINT_MISMATCH: Reason.CHECKPOINT_MISMATCH,
    EXIT_OUTPUT_IN_USE: Reason.OUTPUT_IN_USE,
    EXIT_CHECKPOINT_UNREADABLE: Reason.CHECKPOINT_UNREADABLE,
    EXIT_DATA: Reason.DATA_ERROR,
}


class TrainerVerdict(Exception):
    """A failure the trainer knows is deterministic (a retry would fail the same way): ``str()`` is
    one line; ``python -m trainer`` exits with ``exit_code`` (one of FINAL_EXIT_CODES)."""

    exit_code = EXIT_CONFIG
    #: Rank 0's progress when the verdict was reached (the loop sets it), for the termination message.
    progress: Progress | None = None


class NonFiniteLoss(TrainerVerdict):
    """The loss became NaN or infinite."""

    exit_code = EXIT_NONFINITE


class CheckpointMismatch(TrainerVerdict):
    """The latest checkpoint was written under a config that it cannot resume (a field changed)."""

    exit_code = EXIT_CHECKPOINT_MISMATCH


class OutputInUse(TrainerVerdict):
    """The output directory carries another job's owner marker (``spec.output.takeOver`` is off)."""

    exit_code = EXIT_OUTPUT_IN_USE


class CheckpointUnreadable(TrainerVerdict):
    """Checkpoints exist in the output but none of them can be read."""

    exit_code = EXIT_CHECKPOINT_UNREADABLE


class DataError(TrainerVerdict):
    """A dataset row cannot be used (an image that does not decode). Raised in a loader worker,
    it reaches the training process re-raised by the DataLoader with the worker's traceback in its
    message: ``str()`` keeps only the original one line."""

    exit_code = EXIT_DATA

    def __init__(self, message: str = ""):
        if "Traceback" in message:  # DataLoader's ExceptionWrapper: "Caught DataError in ...\nTraceback...\nX: line"
            last = message.rstrip().splitlines()[-1]
            message = last.split("DataError: ", 1)[-1]
        super().__init__(message)


#: Where Kubernetes reads a container's termination message from.
TERMINATION_LOG = "/dev/termination-log"
#: The port torch.distributed's rendezvous uses between nodes (Kubeflow's default too).
DEFAULT_MASTER_PORT = 23456
