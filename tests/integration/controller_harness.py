"""Helpers to run the real controller against the test control plane (not a test module).

Who uses it and why it exists: ``tests/integration/test_controller*.py`` and
``hack/bench_controller.py`` install the CRD, give the controller a ServiceAccount bound to
exactly ``helm/kubeclip/files/rbac-rules.yaml`` (a TokenRequest token in a kubeconfig of its
own: kopf does not honour kubeconfig impersonation, so the controller *is* the ServiceAccount),
start ``python -m controller`` as a subprocess, and play the kubelet by writing pod status.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "helm/kubeclip/files/crd-finetunejobs.yaml"
RULES_FILE = REPO / "helm/kubeclip/files/rbac-rules.yaml"


def _die_with_parent() -> None:
    """Linux: the controller gets SIGKILL when the test process dies, however it dies."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``fn`` until it returns something truthy; its last value or exception is in the error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as err:
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def install_crd(kubectl: Callable[..., Any]) -> bool:
    """Apply the chart's CRD; True when this call created it (so the caller may delete it)."""
    existed = kubectl("get", "crd", "finetunejobs.kubeclip.dev", check=False).returncode == 0
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    # kubectl wait fails at once ("accessor error") while a new CRD has no status yet: retry it.
    wait_for(
        lambda: (
            kubectl(
                "wait", "--for=condition=Established", "crd/finetunejobs.kubeclip.dev", "--timeout=30s", check=False
            ).returncode
            == 0
        ),
        60,
        0.5,
        "the FineTuneJob CRD Established",
    )
    return not existed


def lease_role(namespace: str, lease_name: str, subject_namespace: str) -> list[dict[str, Any]]:
    """The shipped ``lease`` rules as a Role for one Lease name, bound to the controller's SA."""
    rules = yaml.safe_load(RULES_FILE.read_text())["lease"]
    for r in rules:
        if "resourceNames" in r:
            r["resourceNames"] = [lease_name]
    role = f"kubeclip-lease-{lease_name}"[:63]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role, "namespace": namespace},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "kubeclip-controller", "namespace": subject_namespace}],
        },
    ]


def grant_lease(cluster: Any, namespace: str, lease_name: str) -> None:
    """Let the controller's ServiceAccount (in ``namespace``) hold the Lease ``namespace/lease_name``."""
    cluster.kubectl(
        "apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in lease_role(namespace, lease_name, namespace))
    )


def controller_kubeconfig(
    cluster: Any, sa_namespace: str, out: Path, lease_name: str = "kubeclip-controller", *, kueue: bool = False
) -> Path:
    """A kubeconfig whose user is ServiceAccount ``kubeclip-controller`` with the shipped rules only:
    ``namespaced`` and ``cluster`` in ClusterRoles (the chart's cluster-wide mode), ``lease`` in a
    Role in ``sa_namespace`` for ``lease_name`` only (more names: :func:`grant_lease`)."""
    role = f"kubeclip-controller-test-{uuid.uuid4().hex[:6]}"
    rules = yaml.safe_load(RULES_FILE.read_text())
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "kubeclip-controller", "namespace": sa_namespace},
        },
    ]
    sets = [("", "namespaced"), ("-cluster", "cluster")]
    if kueue:  # the chart's kueue.enabled: the Workload rules too
        sets += [("-kueue", "kueue"), ("-kueue-cluster", "kueueCluster")]
    for suffix, key in sets:
        docs += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role + suffix},
                "rules": rules[key],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role + suffix},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role + suffix},
                "subjects": [{"kind": "ServiceAccount", "name": "kubeclip-controller", "namespace": sa_namespace}],
            },
        ]
    docs += lease_role(sa_namespace, lease_name, sa_namespace)
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    token = cluster.kubectl(
        "create", "token", "kubeclip-controller", "-n", sa_namespace, "--duration=4h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cl = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cl],
        "users": [{"name": "kubeclip-controller", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cl["name"], "user": "kubeclip-controller"}}],
        "current-context": "sa",
    }
    out.write_text(json.dumps(cfg))
    out.chmod(0o600)
    return out


class Operator:
    """``python -m controller`` as a subprocess with its own ports and log file."""

    def __init__(self, kubeconfig: Path | str, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = log_path
        self.argv = [
            sys.executable,
            "-m",
            "controller",
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *args,
        ]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        return self

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.health_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"controller exited {self.proc.returncode}:\n{self.log_tail()}")
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout, 0.2, "controller /readyz")

    def metrics(self) -> str:
        return self.get("/metrics", self.metrics_port)[1]

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples named ``name`` (with ``labels`` as a substring of the label set)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if labels in line:
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_kb(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the controller process in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def set_pod_status(
    core: Any,
    namespace: str,
    name: str,
    phase: str,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str = "",
    pod_reason: str | None = None,
    pod_ip: str = "127.0.0.1",
) -> None:
    """Play the kubelet: write the pod's phase and the trainer container's state."""
    if phase == "Running":
        state: dict[str, Any] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    elif exit_code is not None:
        state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "message": message,
                "startedAt": "2026-01-01T00:00:00Z",
                "finishedAt": "2026-01-01T00:01:00Z",
            }
        }
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status: dict[str, Any] = {
        "phase": phase,
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": phase == "Running",
                "restartCount": 0,
                "image": "img",
                "imageID": "",
                "state": state,
            }
        ],
    }
    if pod_reason:
        status["reason"] = pod_reason
        status["message"] = message
    core.patch_namespaced_pod_status(name, namespace, {"status": status})


def job_manifest(name: str, namespace: str, **spec_over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": "ghcr.io/kubeclip/kubeclip-trainer:0.1.0",
        "model": {"name": "local-dir:/data/tiny_model"},
        "dataset": {"trainCsv": "/data/train.csv", "valCsv": "/data/val.csv"},
        "training": {"epochs": 2, "batchSize": 4},
        "output": {"path": "/data/out"},
        "numNodes": 2,
        "numProcPerNode": 1,
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    spec.update(spec_over)
    return {
        "apiVersion": "kubeclip.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
