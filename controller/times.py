"""Kubernetes timestamps, formatted and parsed in one place.

Who uses it: status and conditions (``metav1.Time``, whole seconds), leader election (the Lease's
``metav1.MicroTime``, microseconds) and the Event writer in ``kube.py``. Always UTC with a ``Z``.
"""

from __future__ import annotations

from datetime import datetime, timezone


def rfc3339(t: datetime, *, micro: bool = False) -> str:
    """``2026-11-27T18:00:00Z`` (metav1.Time), or with ``micro`` ``...00.123456Z`` (metav1.MicroTime)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    """Either form back to an aware UTC datetime; None for an empty or malformed value."""
    if not s:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return None
