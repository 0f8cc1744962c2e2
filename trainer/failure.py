"""A failed rank's cause, said where people look: the launcher's console and the pod's termination message.

Who uses it: ``python -m trainer`` (:func:`crashed` on an uncaught exception, :func:`record` on a
one-line verdict), ``kubeclip run`` (:func:`first_failure` reads what the ranks recorded).

A rank that crashes prints its traceback on its own stderr, which ``kubeclip run`` sends to
``<output>/logs/`` and a pod to its log. So it also writes:

* the *error file* torchrun's agent gives each worker (``$TORCHELASTIC_ERROR_FILE``): the one-line
  summary as ``message`` (what torchrun's ``ChildFailedError`` reports and ``trainer.node`` puts in
  the termination message) and, under ``kubeclip``, the last traceback lines and a precise time, from
  which ``kubeclip run`` picks the rank that failed first (a peer's broken collective fails later);
* the termination log (``/dev/termination-log`` in a pod), when no process of the container wrote
  one yet: ``kubectl describe ftj`` then shows ``rank 1 failed: RuntimeError: ... (evaluate.py:31
  in evaluate)`` instead of a log tail.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from kubeclip.api import SIGNAL_EXIT_BASE, termination_log_path
from trainer.exits import has_content, write_termination_log

#: Traceback lines kept for the console (the exception's own line and the frames just above it).
TAIL_LINES = 8
#: A summary line longer than this is cut (a huge tensor printed in an exception message).
MAX_LINE = 600


def summary(err: BaseException) -> str:
    """``rank R failed: Type: first line of the message (file.py:LINE in func)``."""
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        f = frames[-1]
        line += f" ({Path(f.filename).name}:{f.lineno} in {f.name})"
    rank = os.environ.get("RANK", "0")
    line = f"rank {rank} failed: {line}"
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def _write_error_file(message: str, tail: list[str], code: int) -> None:
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {
        "message": message,  # a string: torchrun's ProcessFailure.message is this line
        "timestamp": int(time.time()),
        # ``exit``: the code this rank is exiting with; torchrun may SIGTERM it while it exits
        # (a peer that failed in the same moment exited first), and then this is still its cause
        "kubeclip": {"time": time.time(), "rank": int(os.environ.get("RANK", "0")), "tail": tail, "exit": code},
    }
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except OSError:
        pass


def record(code: int, line: str) -> int:
    """A one-line failure (a verdict, a config error): into the error file; returns ``code``."""
    _write_error_file(line, [line], code)
    return code


def crashed(err: BaseException) -> None:
    """An uncaught exception: summary and traceback tail into the error file, the summary into an
    empty termination log (the first rank to fail wins; later knock-on failures do not overwrite)."""
    line = summary(err)
    tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip().splitlines()
    _write_error_file(line, tail[-TAIL_LINES:], 1)
    path = termination_log_path()
    if not has_content(path):
        write_termination_log(line, path)


def _recorded(failure: Any) -> dict[str, Any]:
    """What the rank wrote under ``kubeclip`` in its error file ({} when it wrote nothing)."""
    data = getattr(failure, "error_file_data", None) or {}
    info = data.get("kubeclip") if isinstance(data, dict) else None
    return info if isinstance(info, dict) else {}


def first_failure(failures: dict[int, Any]) -> tuple[int, Any] | None:
    """The ``(rank, ProcessFailure)`` that failed first by the precise time the ranks recorded
    (torchrun's own pick uses whole seconds), else the first with an exit code."""
    timed = []
    for rank, f in failures.items():
        at = _recorded(f).get("time")
        if isinstance(at, (int, float)) and not isinstance(at, bool):
            timed.append((at, rank, f))
    if timed:
        _, rank, f = min(timed, key=lambda t: (t[0], t[1]))
        return rank, f
    for rank, f in sorted(failures.items()):
        if f.exitcode not in (0, None):
            return rank, f
    return None


def killed_by(failure: Any) -> int | None:
    """The signal that ended this rank, when it was one and not its own failure: None when the rank
    exited by itself, or when it recorded its failure (and its ``exit``) first and was only
    stopped by torchrun's SIGTERM to the remaining ranks while it was exiting."""
    code = failure.exitcode
    if code >= 0:
        return None
    return None if _recorded_exit(failure) else -code


def exit_code(failure: Any) -> int:
    """The shell's exit code for this rank's failure: its own code; for a rank killed by signal N,
    ``128 + N``, unless it had recorded its own failure first (see :func:`killed_by`)."""
    if failure.exitcode >= 0:
        return int(failure.exitcode)
    sig = killed_by(failure)
    return SIGNAL_EXIT_BASE + sig if sig is not None else _recorded_exit(failure)


def _recorded_exit(failure: Any) -> int:
    """The non-zero exit code the rank recorded before it ended, else 0."""
    code = _recorded(failure).get("exit")
    return code if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256 else 0


def console_lines(failure: Any) -> list[str]:
    """What ``kubeclip run`` prints for a failed rank: the recorded traceback tail, else its message."""
    tail = _recorded(failure).get("tail")
    if isinstance(tail, list):
        lines = [str(x) for x in tail]
        message = (getattr(failure, "error_file_data", None) or {}).get("message")
        if isinstance(message, str) and message not in lines:
            lines.append(message)
        return lines
    message = getattr(failure, "message", "")
    return [message] if isinstance(message, str) and message and "enable traceback" not in message else []
