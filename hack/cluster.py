"""`make cluster-up` / `make cluster-down`: a local etcd + kube-apiserver (+ controller manager) for people.

Who uses it: developers and scripts that want to try the operator or the chart by hand against a
real API server without a container runtime. It reuses the test suite's control plane
(tests/support/controlplane.py) but detaches it: the processes outlive this script, their process
groups are recorded in .cluster/state.json, and `down` stops them and removes .cluster/.

    python hack/cluster.py up     # prints: export KUBECONFIG=<repo>/.cluster/kubeconfig
    python hack/cluster.py down
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.controlplane import ControlPlane, ControlPlaneError, client_bin_dir, stop_from_state  # noqa: E402

CLUSTER_DIR = REPO / ".cluster"


def up() -> int:
    state = CLUSTER_DIR / "state.json"
    if state.exists():
        pgids = json.loads(state.read_text())["pgids"].values()
        if all(_alive(p) for p in pgids):
            print(f"a cluster is already up (stop it with `make cluster-down`)\nexport KUBECONFIG={CLUSTER_DIR / 'kubeconfig'}")
            return 0
        print("the previous cluster died; starting a new one")
        stop_from_state(CLUSTER_DIR)
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    t0 = time.monotonic()
    cp = ControlPlane(CLUSTER_DIR, owned=False)
    try:
        cp.start()
    except ControlPlaneError as e:
        print(f"cluster-up failed (logs in {CLUSTER_DIR}):\n{e}", file=sys.stderr)
        return 1
    print(f"control plane up in {time.monotonic() - t0:.1f}s: {cp.server} "
          f"({', '.join(cp.procs)}; logs in {CLUSTER_DIR})")
    print(f"kubectl and helm are in {client_bin_dir()}; no kubelet: pods are created but never run.")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    return 0


def _alive(pid: int) -> bool:
    """The group leader still runs (a zombie, left unreaped once this script has exited, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def down() -> int:
    if stop_from_state(CLUSTER_DIR):
        print("control plane stopped")
    else:
        print("no cluster was up")
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    cmds = {"up": up, "down": down}
    if len(sys.argv) != 2 or sys.argv[1] not in cmds:
        sys.exit(f"usage: {sys.argv[0]} up|down")
    sys.exit(cmds[sys.argv[1]]())
