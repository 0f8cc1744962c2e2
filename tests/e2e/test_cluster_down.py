"""`make cluster-down` leaves nothing behind: no process, no mount, no network namespace.

Who uses it: ``make e2e``, as its last test (marker ``last``): it stops the cluster the others used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devkit import netns
from devkit.node import NAME, RUN_DIR, _cgroup_pids, _pids_of_shims, mounts_under
from devkit.paths import CLUSTER_DIR, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.last]


def _cluster_processes() -> list[str]:
    """Processes whose command line names the cluster's directories or binaries."""
    hits = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(CLUSTER_DIR) in cmd or str(RUN_DIR) in cmd or f"/run/netns/{NAME}" in cmd:
            hits.append(f"{d.name}: {cmd[:200]}")
    return hits


def test_cluster_down_leaves_no_process_mount_or_namespace(kube):
    # the cluster is really up: pods, their mounts and the namespace exist now
    assert netns.exists(NAME)
    assert _cluster_processes()
    assert _pids_of_shims()
    assert _cgroup_pids()
    assert mounts_under(CLUSTER_DIR, RUN_DIR)
    proc = subprocess.run(
        [sys.executable, "-m", "hack.cluster", "down"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _cluster_processes() == []
    assert _pids_of_shims() == []
    assert _cgroup_pids() == []
    assert mounts_under(CLUSTER_DIR, RUN_DIR) == []
    assert not netns.exists(NAME)
    assert not CLUSTER_DIR.exists()
    assert not RUN_DIR.exists()
