"""What the local cluster's add-on scripts share beyond the dev kit: ``hack/monitoring.py``
(``make monitoring-up``) and ``hack/kueue.py`` (``make kueue-up``) both install from a Go module pinned
in a ``hack/<name>/go.mod`` and report a failed step in one line. kubectl, polling and the local
cluster's handle come from ``devkit`` (``devkit.cluster.local_cluster``, ``devkit.wait.wait_for``)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path


class AddonError(Exception):
    """A step of bringing an add-on up failed; the message is the one line shown to the user."""


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
