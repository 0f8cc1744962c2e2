"""`make cluster-up` / `make cluster-down`: a real one-node Kubernetes cluster on this machine.

Who uses it: people trying kubeclip end to end (`make cluster-up images deploy`, then `kubectl apply
-f examples/...`) and the e2e tests (tests/e2e), which expect the cluster to be up. It assembles:
etcd, kube-apiserver, kube-controller-manager (default controllers), kube-scheduler
(devkit/controlplane.py), containerd + runc + CNI bridge, kubelet, kube-proxy and the host
relay (devkit/node.py), all inside the network namespace `kubeclip`; then CoreDNS and
local-path-provisioner (the default StorageClass) as real Deployments (hack/node/*.yaml) on images
built by hack/images.sh. The processes outlive this script; .cluster/state.json records them and
`down` stops them, unmounts what they mounted and deletes the namespace. Needs root.

    python -m hack.cluster up     # prints: export KUBECONFIG=<repo>/.cluster/kubeconfig
    python -m hack.cluster down   # exit status 1 if anything (process, mount, namespace) is left
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devkit import netns
from devkit.controlplane import SERVICE_CIDR, ControlPlane, ControlPlaneError, client_bin_dir
from devkit.node import NAME, NODE_IP, RUN_DIR, TIMINGS, Node, teardown
from devkit.paths import CLUSTER_DIR, REPO


def _alive(pid: int) -> bool:
    """The group leader still runs (a zombie, left unreaped once this script has exited, does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _state() -> dict | None:
    p = CLUSTER_DIR / "state.json"
    return json.loads(p.read_text()) if p.exists() else None


def up() -> int:
    if os.geteuid() != 0:
        print("cluster-up needs root (network namespace, containerd, kubelet)", file=sys.stderr)
        return 1
    state = _state()
    if state:
        if all(_alive(p) for p in state["pgids"].values()):
            print(
                f"a cluster is already up (stop it with `make cluster-down`)\nexport KUBECONFIG={CLUSTER_DIR / 'kubeconfig'}"
            )
            return 0
        print("the previous cluster died; cleaning it up")
        down()
    elif netns.exists(NAME) or RUN_DIR.exists():
        print(
            f"network namespace {NAME} or {RUN_DIR} exists without {CLUSTER_DIR}/state.json: another "
            "checkout's cluster? Run `make cluster-down` there (one cluster per machine).",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    CLUSTER_DIR.mkdir(parents=True)
    t0 = time.monotonic()
    steps: list[str] = []

    def step(name: str, t: float) -> None:
        steps.append(f"{name} {time.monotonic() - t:.1f}s")

    try:
        t = time.monotonic()
        archives = subprocess.run(
            ["bash", str(REPO / "hack/images.sh"), "system"], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.split()
        step("system images", t)
        t = time.monotonic()
        netns.create(NAME, NODE_IP, SERVICE_CIDR)
        cp = ControlPlane(CLUSTER_DIR, owned=False, netns=NAME, node_ip=NODE_IP, kubeconfig_name="kubeconfig.internal")
        try:
            cp.start()
        finally:
            cp.write_state()
        step("control plane", t)
        node = Node(cp)
        for name, fn in (
            ("relay", node.start_relay),
            ("scheduler", node.start_scheduler),
            ("containerd", node.start_containerd),
            ("images", lambda: node.import_images(archives)),
            ("kubelet", node.start_kubelet),
            ("kube-proxy", node.start_kube_proxy),
        ):
            t = time.monotonic()
            try:
                fn()
            finally:
                cp.write_state(host_port=node.host_port)
            step(name, t)
        t = time.monotonic()
        node.kube.kubectl("apply", "-f", str(REPO / "hack/node/coredns.yaml"))
        (CLUSTER_DIR / "volumes").mkdir(exist_ok=True)
        node.kube.kubectl(
            "apply",
            "-f",
            "-",
            input=(REPO / "hack/node/local-path.yaml")
            .read_text()
            .replace("VOLUMES_DIR", str((CLUSTER_DIR / "volumes").resolve())),
        )
        for ns, deploy in (("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner")):
            out = node.kube.kubectl(
                "-n", ns, "rollout", "status", f"deployment/{deploy}", "--timeout=180s", check=False
            )
            if out.returncode != 0:
                pods = node.kube.kubectl("-n", ns, "describe", "pods", check=False).stdout[-3000:]
                raise ControlPlaneError(f"{deploy} not available: {out.stderr.strip()}\n{pods}")
        step("CoreDNS + local-path", t)
    except (ControlPlaneError, netns.NetnsError, subprocess.CalledProcessError) as e:
        print(f"cluster-up failed (logs in {CLUSTER_DIR}; `make cluster-down` cleans up):\n{e}", file=sys.stderr)
        return 1
    print(f"cluster up in {time.monotonic() - t0:.1f}s ({', '.join(steps)}); logs in {CLUSTER_DIR}")
    print(f"node {NODE_IP} in network namespace {NAME}; kubectl and helm are in {client_bin_dir()}")
    print(f"export KUBECONFIG={CLUSTER_DIR / 'kubeconfig'}")
    return 0


def down() -> int:
    state = _state()
    if state is None and not netns.exists(NAME) and not RUN_DIR.exists():
        print("no cluster was up")
        shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
        return 0
    t0 = time.monotonic()
    problems = teardown(CLUSTER_DIR, (state or {}).get("pgids", {}))
    if problems:
        print("cluster-down left things behind:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
    print(
        f"cluster stopped and cleaned up in {time.monotonic() - t0:.1f}s "
        f"({', '.join(f'{k} at {v:.1f}s' for k, v in TIMINGS.items())})"
    )
    return 0


if __name__ == "__main__":
    cmds = {"up": up, "down": down}
    if len(sys.argv) != 2 or sys.argv[1] not in cmds:
        sys.exit("usage: python -m hack.cluster up|down")
    sys.exit(cmds[sys.argv[1]]())
