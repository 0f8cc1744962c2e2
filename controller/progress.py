"""Read the trainer's progress from node 0's ``GET /progress`` (docs/contracts.md, "Progress").

Who uses it and why it exists: the reconcile pass (:mod:`controller.worker`) reads it for jobs
whose node 0 is running and hands the JSON to the pure planner, which maps it onto
``status.progress``. Any failure (pod not reachable yet, trainer between phases) is just "no
progress this time": progress is informative and must never fail a pass.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from .settings import Settings

log = logging.getLogger(__name__)


def progress_url(pod: dict[str, Any], metrics_port: int, settings: Settings) -> str | None:
    host = settings.progress_host or (pod.get("status") or {}).get("podIP")
    port = settings.progress_port or metrics_port
    if not host or not port:
        return None
    return f"http://{host}:{port}/progress"


def read_progress(url: str, timeout: float) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http to a pod IP)
            data = json.loads(resp.read(1 << 20))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError) as err:
        log.debug("progress unavailable at %s: %s", url, err)
        return None
