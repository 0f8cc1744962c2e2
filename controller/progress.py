"""Read the trainer's progress from node 0's ``GET /progress`` (docs/contracts.md, "Progress").

Who uses it and why it exists: the reconcile pass (:mod:`controller.worker`) reads it for jobs
whose node 0 is running and hands the JSON to the pure planner, which maps it onto
``status.progress``. Any failure (pod not reachable yet, trainer between phases) is just "no
progress this time": progress is informative and must never fail a pass.

The trainer image is the job author's, so what answers on that port is untrusted:

* one request over a plain socket, no redirects followed (a ``Location`` pointing at a cloud
  metadata address would otherwise be fetched from the controller's own network position);
* one deadline for connecting, the headers and the body together (a per-read timeout lets a body
  sent one byte at a time pin a worker thread for ever);
* at most :data:`MAX_RESPONSE_BYTES` of body;
* the document validated by :class:`kubeclip.api.Progress` (finite, bounded numbers and bounded
  strings); JSON constants (``Infinity``, ``NaN``) are refused.

A bad answer is ignored and logged as a warning once per job (then at debug level), so a hostile
or broken trainer costs at most one read of :attr:`Settings.progress_timeout_s` per pass and one
log line.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from kubeclip.api import Progress

from .settings import Settings

log = logging.getLogger(__name__)

#: Largest /progress body read (the trainer's document is about 2 KiB).
MAX_RESPONSE_BYTES = 64 * 1024
#: Largest status line plus headers read before the body.
MAX_HEADER_BYTES = 16 * 1024
#: Jobs remembered as already warned about (oldest forgotten first), so memory stays bounded.
_WARNED_MAX = 4096


class BadAnswer(Exception):
    """Node 0 answered, but not with a progress document the controller accepts."""


class _Warned:
    """Jobs whose bad answer was already logged as a warning (thread-safe, bounded)."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, key: str) -> bool:
        with self._lock:
            if key in self._keys:
                return False
            self._keys[key] = None
            if len(self._keys) > _WARNED_MAX:
                self._keys.popitem(last=False)
            return True


_warned = _Warned()


def progress_url(pod: dict[str, Any], metrics_port: int, settings: Settings) -> str | None:
    host = settings.progress_host or (pod.get("status") or {}).get("podIP")
    port = settings.progress_port or metrics_port
    if not host or not port:
        return None
    if ":" in host:  # an IPv6 pod IP
        host = f"[{host}]"
    return f"http://{host}:{port}/progress"


def read_progress(url: str, timeout: float, *, job: str | None = None) -> dict[str, Any] | None:
    """Node 0's progress document (the fields it set, validated), or None.

    ``timeout`` bounds the whole read. ``job`` ("namespace/name") keys the once-per-job warning
    about a bad answer; without it the URL does.
    """
    try:
        body = _fetch(url, time.monotonic() + timeout)
        progress = Progress.model_validate(json.loads(body, parse_constant=_no_constants))
    except (OSError, http.client.HTTPException) as err:  # not reachable (yet): nothing to say
        log.debug("progress unavailable at %s: %s", url, err)
        return None
    except (BadAnswer, ValidationError, ValueError, RecursionError) as err:
        text = _one_line(err)
        if _warned.first(job or url):
            log.warning("ignoring node 0's /progress answer (%s): %s", url, text, extra={"job": job or url})
        else:
            log.debug("ignoring node 0's /progress answer (%s): %s", url, text)
        return None
    return progress.model_dump(mode="json", exclude_unset=True)


def _fetch(url: str, deadline: float) -> bytes:
    """``GET url`` (plain HTTP) within ``deadline`` (a ``time.monotonic()``): the body of a 200."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise BadAnswer(f"not an http://host:port URL: {url!r}")
    request = (
        f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    with socket.create_connection((parts.hostname, parts.port), timeout=_left(deadline)) as sock:
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        raw = _receive(sock, deadline)
    response = http.client.HTTPResponse(_Recorded(raw))  # type: ignore[arg-type]
    response.begin()  # parses what was received; nothing more is read from the network
    if response.status != 200:
        redirect = " (redirects are not followed)" if 300 <= response.status < 400 else ""
        raise BadAnswer(f"HTTP {response.status} {response.reason[:100]}{redirect}")
    return response.read()


def _receive(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes, within the deadline and the size caps."""
    limit = MAX_HEADER_BYTES + MAX_RESPONSE_BYTES
    buf = bytearray()
    while True:
        left = _left(deadline)
        sock.settimeout(left)
        try:
            chunk = sock.recv(16 * 1024)
        except TimeoutError:
            raise BadAnswer(f"no complete answer within the deadline ({len(buf)} bytes received)") from None
        if not chunk:
            break
        buf += chunk
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0 and len(buf) > MAX_HEADER_BYTES:
            raise BadAnswer(f"headers over {MAX_HEADER_BYTES} bytes")
        if head_end >= 0 and len(buf) - head_end - 4 > MAX_RESPONSE_BYTES:
            raise BadAnswer(f"body over {MAX_RESPONSE_BYTES} bytes")
        if len(buf) > limit:
            raise BadAnswer(f"answer over {limit} bytes")
    return bytes(buf)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BadAnswer("no complete answer within the deadline")
    return left


class _Recorded:
    """What :class:`http.client.HTTPResponse` needs of a socket, over bytes already received."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    def makefile(self, *_args: Any, **_kw: Any) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._raw))


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _one_line(err: BaseException) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "document"
        return f"{err.error_count()} invalid field(s), first {where}: {first['msg']}"[:300]
    return (str(err).splitlines() or [type(err).__name__])[0][:300]
