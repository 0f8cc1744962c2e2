"""How a trainer process ends on a one-line error: stderr, the pod's termination message, the exit code.

Who uses it: ``python -m trainer`` (config errors, preflight failures, final verdicts),
``trainer.node`` (the pod entrypoint: preflight, rendezvous and the way torchrun ended),
``trainer.preflight`` (the forked preflight child), ``trainer.failure`` (a crash's summary) and
``trainer.train`` (rank 0's final message on success).

Why it exists: every way out of the trainer writes the same file the same way. Kubernetes copies
the container's termination message (``/dev/termination-log``, or
``kubeclip.api.termination_log_path()``) into the pod status, where the controller reads the
reason; the first process of a container to write it wins, so the later knock-on failures of
the other ranks do not overwrite the cause (:func:`has_content`). The exit codes themselves and
the message format are the API's (``kubeclip.api``, docs/contracts.md).
"""

from __future__ import annotations

import os
import sys

from kubeclip.api import TERMINATION_MESSAGE_MAX_BYTES, Progress, termination_log_path, termination_message


def write_termination_log(message: str, path: str) -> None:
    """Kubernetes shows this file's content in the pod status; write it only where it exists,
    cut to what Kubernetes keeps."""
    if os.path.exists(path):
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(message.encode("utf-8")[:TERMINATION_MESSAGE_MAX_BYTES].decode("utf-8", errors="ignore"))
        except OSError:
            pass


def has_content(path: str) -> bool:
    """Did a process of this container write the termination log already?"""
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def fail(
    line: str,
    code: int,
    *,
    echo: bool = True,
    progress: Progress | None = None,
    overwrite: bool = True,
    path: str | None = None,
) -> int:
    """End a run on a one-line error: stderr (when ``echo``), the pod's termination log (``path``,
    default ``kubeclip.api.termination_log_path()``; followed by rank 0's final ``progress`` when
    given), exit code. ``overwrite=False``: leave a termination log that another process of the
    container wrote already (rank 0's verdict with its progress)."""
    if echo:
        print(line, file=sys.stderr, flush=True)
    path = path or termination_log_path()
    if overwrite or not has_content(path):
        write_termination_log(termination_message(line, progress), path)
    return code
