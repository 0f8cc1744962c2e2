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

from kubeclip.api import termination_log_path
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


def _write_error_file(message: str, tail: list[str]) -> None:
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {
        "message": message,  # a string: torchrun's ProcessFailure.message is this line
        "timestamp": int(time.time()),
        "kubeclip": {"time": time.time(), "rank": int(os.environ.get("RANK", "0")), "tail": tail},
    }
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except OSError:
        pass


def record(code: int, line: str) -> int:
    """A one-line failure (a verdict, a config error): into the error file; returns ``code``."""
    _write_error_file(line, [line])
    return code


def crashed(err: BaseException) -> None:
    """An uncaught exception: summary and traceback tail into the error file, the summary into an
    empty termination log (the first rank to fail wins; later knock-on failures do not overwrite)."""
    line = summary(err)
    tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip().splitlines()
    _write_error_file(line, tail[-TAIL_LINES:])
    path = termination_log_path()
    if not has_content(path):
        write_termination_log(line, path)


def first_failure(failures: dict[int, Any]) -> tuple[int, Any] | None:
    """The ``(rank, ProcessFailure)`` that failed first by the precise time the ranks recorded
    (torchrun's own pick uses whole seconds), else the first with an exit code."""
    timed = []
    for rank, f in failures.items():
        data = getattr(f, "error_file_data", None) or {}
        info = data.get("kubeclip") if isinstance(data, dict) else None
        if isinstance(info, dict) and isinstance(info.get("time"), (int, float)):
            timed.append((info["time"], rank, f))
    if timed:
        _, rank, f = min(timed, key=lambda t: (t[0], t[1]))
        return rank, f
    for rank, f in sorted(failures.items()):
        if f.exitcode not in (0, None):
            return rank, f
    return None


def console_lines(failure: Any) -> list[str]:
    """What ``kubeclip run`` prints for a failed rank: the recorded traceback tail, else its message."""
    data = getattr(failure, "error_file_data", None) or {}
    info = data.get("kubeclip") if isinstance(data, dict) else None
    if isinstance(info, dict) and isinstance(info.get("tail"), list):
        lines = [str(x) for x in info["tail"]]
        message = data.get("message")
        if isinstance(message, str) and message not in lines:
            lines.append(message)
        return lines
    message = getattr(failure, "message", "")
    return [message] if isinstance(message, str) and message and "enable traceback" not in message else []
