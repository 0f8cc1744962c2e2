"""The trainer's termination message: a line for people, then its final progress for the controller.

Who uses it and why it exists: the controller reads the trainer's progress from node 0's
``GET /progress`` only while node 0 runs, so a run whose last eval lands shortly before it exits
would end with stale figures in ``status.progress``. Rank 0 therefore ends its termination message
(``/dev/termination-log``, which Kubernetes copies into the pod status) with its final
:class:`Progress` (``trainer.train`` on success, ``python -m trainer`` on a final verdict), built by
:func:`termination_message`; the controller splits the message with :func:`read_termination_message`,
shows the text in the job's message and maps the progress onto ``status.progress``
(docs/contracts.md, "Progress").

The format: the human text, then one last line ``kubeclip-final-progress {compact JSON}``, at most
:data:`TERMINATION_MESSAGE_MAX_BYTES` in all. Kubernetes keeps the *last* 4096 bytes of the file,
so the JSON goes last and the text is what gets shortened. Reading never raises: a message that is
absent, not ours, malformed or oversized simply has no progress.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, NamedTuple

from .contracts import TERMINATION_LOG
from .progress import Progress

#: Kubernetes keeps at most this many bytes of a container's termination message (the last ones).
TERMINATION_MESSAGE_MAX_BYTES = 4096
#: The last line of the message: this marker, then the final progress as compact JSON.
FINAL_PROGRESS_MARKER = "kubeclip-final-progress "
#: The progress line gets at most this many bytes; the rest is left to the human text.
_PROGRESS_LINE_MAX_BYTES = 2048
#: Numbers beyond this are refused when reading (status.progress holds int64s and finite floats).
_NUMBER_LIMIT = 2.0**53
#: Progress fields the line leaves out: the text carries the message; the port means nothing after exit.
_LEFT_OUT = {"message", "metricsPort"}


class TerminationMessage(NamedTuple):
    text: str  # for people: the job's Succeeded/Failed message
    progress: Progress | None  # the trainer's final progress, when the message carried a valid one


def termination_log_path() -> str:
    """Where this process writes its termination message: ``$KUBECLIP_TERMINATION_LOG`` when set
    (a container with another ``terminationMessagePath``, a test), else ``/dev/termination-log``."""
    return os.environ.get("KUBECLIP_TERMINATION_LOG") or TERMINATION_LOG


def _compact(progress: Progress, reduced: bool) -> str:
    data: dict[str, Any] = json.loads(progress.model_dump_json(exclude=_LEFT_OUT, exclude_none=True))
    for key, value in data.items():  # a NaN eval figure is dumped as null, which would not read back
        if isinstance(value, dict):
            data[key] = {k: v for k, v in value.items() if v is not None}
    if reduced:  # what status.progress shows, no paths or lists
        for key in ("eval", "baseline", "retention", "retentionBaseline"):
            data[key] = {k: v for k, v in (data.get(key) or {}).items() if k.endswith("_R@1")}
        for key in ("zeroShot", "zeroShotBaseline"):
            data[key] = {k: v for k, v in (data.get(key) or {}).items() if k == "top1"}
        for key in ("lastCheckpoint", "modelPath", "skippedCheckpoints"):
            data.pop(key, None)
    data = {k: v for k, v in data.items() if v not in ({}, [])}
    return FINAL_PROGRESS_MARKER + json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)


def _cut(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[: max(0, max_bytes - 3)].decode("utf-8", errors="ignore") + "..."


def termination_message(text: str, progress: Progress | None) -> str:
    """``text`` (shortened to fit), then the progress line when there is a progress that fits; at
    most :data:`TERMINATION_MESSAGE_MAX_BYTES` bytes of UTF-8."""
    line = ""
    if progress is not None:
        for reduced in (False, True):
            try:
                candidate = _compact(progress, reduced)
            except ValueError:  # a NaN/inf the JSON cannot carry: no progress line
                break
            if len(candidate.encode("utf-8")) <= _PROGRESS_LINE_MAX_BYTES:
                line = candidate
                break
    text = text.strip()
    if not line:
        return _cut(text, TERMINATION_MESSAGE_MAX_BYTES)
    return _cut(text, TERMINATION_MESSAGE_MAX_BYTES - len(line.encode("utf-8")) - 1) + "\n" + line


def _bounded(value: Any) -> bool:
    """Finite numbers within int64 (and JSON-exact) range, all the way down."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return abs(value) <= _NUMBER_LIMIT
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= _NUMBER_LIMIT
    if isinstance(value, list):
        return all(_bounded(v) for v in value)
    if isinstance(value, dict):
        return all(_bounded(v) for v in value.values())
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def read_termination_message(message: Any) -> TerminationMessage:
    """Split a container's termination message into its text and the final progress; never raises."""
    if not isinstance(message, str):
        return TerminationMessage("", None)
    head, _, last = message.rstrip().rpartition("\n")
    if not last.startswith(FINAL_PROGRESS_MARKER):
        return TerminationMessage(message.strip(), None)
    text = head.strip()
    payload = last[len(FINAL_PROGRESS_MARKER) :]
    if len(payload.encode("utf-8", errors="replace")) > TERMINATION_MESSAGE_MAX_BYTES:
        return TerminationMessage(text, None)
    try:
        data = json.loads(payload, parse_constant=_no_constants)
        if not isinstance(data, dict) or not _bounded(data):
            return TerminationMessage(text, None)
        return TerminationMessage(text, Progress.model_validate(data))
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        return TerminationMessage(text, None)
