"""What the local cluster's add-on scripts share: ``hack/monitoring.py`` (``make monitoring-up``) and
``hack/kueue.py`` (``make kueue-up``) both run kubectl against ``.cluster/kubeconfig``, install from a
Go module pinned in a ``hack/<name>/go.mod``, and poll for readiness. One copy here, imported by both."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import deploy


class AddonError(Exception):
    """A step of bringing an add-on up failed; the message is the one line shown to the user."""


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [deploy._tool("kubectl"), f"--kubeconfig={deploy.CLUSTER_DIR / 'kubeconfig'}", *args],
        input=input,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AddonError(f"kubectl {' '.join(args[:4])}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def go_module_dir(moddir: Path, module: str) -> Path:
    """``module``'s source at the version ``moddir/go.mod`` pins, downloaded if the Go cache lacks it."""
    version = re.search(re.escape(module) + r"\s+(v\S+)", (moddir / "go.mod").read_text()).group(1)  # type: ignore[union-attr]
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=moddir,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def wait_for(what: str, ok: Callable[[], object], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(2)
    raise AddonError(f"timed out after {timeout_s:.0f}s waiting for {what}")
