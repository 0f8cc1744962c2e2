"""What the trainer reports back to the controller: exit codes, its final verdicts, the
termination log, the rendezvous port (docs/contracts.md).

Who uses it: the trainer exits with these codes and raises the verdicts; the controller's
``plan()`` reads the codes from pod status and decides retry or final failure from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
#: The exit codes that are the trainer's own final verdicts: the controller never retries them.
FINAL_EXIT_CODES = {
    EXIT_CONFIG: "InvalidConfig",
    EXIT_PREFLIGHT: "PreflightFailed",
    EXIT_NONFINITE: "NonFiniteLoss",
    EXIT_CHECKPOINT_MISMATCH: "CheckpointMismatch",
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


#: Where Kubernetes reads a container's termination message from.
TERMINATION_LOG = "/dev/termination-log"
#: The port torch.distributed's rendezvous uses between nodes (Kubeflow's default too).
DEFAULT_MASTER_PORT = 23456
