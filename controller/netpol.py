"""The NetworkPolicy of one FineTuneJob's pods: who may connect to them.

Who uses it and why it exists: the trainer's rendezvous (the c10d store on port 23456) has no
authentication, and ``all_gather_object``/``broadcast_object_list`` unpickle what peers send, so
whoever reaches a job's pods can run code in them. The worker creates this policy with the job's
Service (:meth:`controller.worker.Worker.apply`), owned by the job so the garbage collector
deletes it with the job. It selects the job's pods and lets in only:

* the job's own pods, on any port (rendezvous, and NCCL/gloo, which pick their ports at run time);
* the monitoring namespace (``Settings.monitoring_namespace``), on the ``metrics`` port;
* this controller's pods (``Settings.controller_pod_labels`` in ``Settings.lease_namespace``, its
  own namespace), on the ``metrics`` port, where it reads node 0's ``/progress``.

Policies add up: another NetworkPolicy that selects the same pods opens more (the chart README,
"Security", shows one). Only a CNI that enforces NetworkPolicy makes any of this bite.
Pure: no API calls here.
"""

from __future__ import annotations

from typing import Any

from . import naming
from .builders import owner_reference
from .settings import Settings

#: The label every namespace carries with its own name (Kubernetes 1.22+).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: The container port the trainer serves /metrics and /progress on (controller/builders.py).
METRICS_PORT_NAME = "metrics"


def network_policy(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    own_pods = {"matchLabels": {naming.LABEL_JOB: name}}
    metrics = [{"protocol": "TCP", "port": METRICS_PORT_NAME}]
    controller: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.lease_namespace}}
    }
    if settings.controller_pod_labels:
        controller["podSelector"] = {"matchLabels": dict(settings.controller_pod_labels)}
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": own_pods}]},
        {"from": [controller], "ports": metrics},
    ]
    if settings.monitoring_namespace:
        scraper = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.monitoring_namespace}}}
        ingress.append({"from": [scraper], "ports": metrics})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": naming.service_name(name),
            "namespace": ns,
            "labels": {naming.LABEL_JOB: name},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {"podSelector": own_pods, "policyTypes": ["Ingress"], "ingress": ingress},
    }
