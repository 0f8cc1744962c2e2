"""What the controller integration tests add to the dev kit (not a test module).

Who uses it and why it exists: ``tests/integration/test_controller*.py`` give the controller a
ServiceAccount bound to exactly ``helm/kubeclip/files/rbac-rules.yaml`` (a TokenRequest token in a
kubeconfig of its own: kopf does not honour kubeconfig impersonation, so the controller *is* the
ServiceAccount) and play the kubelet by writing pod status. Starting ``python -m controller``,
installing the CRD, polling and the job documents are the dev kit's (``devkit.operator``,
``devkit.wait``, ``devkit.jobs``), shared with ``hack/bench_controller.py``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from devkit.paths import REPO

RULES_FILE = REPO / "helm/kubeclip/files/rbac-rules.yaml"


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
