"""Pure builders: a FineTuneJob -> the ConfigMap, headless Service and pods it owns (plain dicts).

Who uses it and why it exists: :mod:`controller.reconcile` calls these to know what *should*
exist, and the shell (:mod:`controller.kube`) posts them unchanged. Keeping them pure means the
pod env, securityContext and owner references are table-tested without an API server, and every
pass builds exactly the same objects (deterministic names, no randomness, no clock).
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from kubeclip.api import (
    API_GROUP,
    API_VERSION,
    CONFIG_DIR,
    CONFIG_VOLUME,
    DEFAULT_MASTER_PORT,
    GPU_RESOURCE,
    KIND,
    SHM_PATH,
    SHM_VOLUME,
    FineTuneJobSpec,
    trainer_part,
)

from . import naming

CONFIG_KEY = "job.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
COMMAND = ["python", "-m", "trainer.node", CONFIG_PATH]
#: The restricted Pod Security Standard, and the trainer image's non-root user (uid 1000).
RUN_AS_USER = 1000


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: dict[str, Any], name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    job_name = job["metadata"]["name"]
    return {
        "name": name,
        "namespace": job["metadata"]["namespace"],
        "labels": {
            naming.LABEL_JOB: job_name,
            naming.LABEL_MANAGED: naming.MANAGER,
            "app.kubernetes.io/name": "kubeclip",
            **(extra_labels or {}),
        },
        "ownerReferences": [owner_reference(job)],
    }


def trainer_manifest(job: dict[str, Any]) -> str:
    """The job.yaml the trainer reads: the FineTuneJob with only the trainer's part of the spec."""
    doc = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": job["metadata"]["name"], "namespace": job["metadata"]["namespace"]},
        "spec": trainer_part(job.get("spec") or {}),
    }
    return yaml.safe_dump(doc, sort_keys=True)


def configmap(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(job, naming.configmap_name(job["metadata"]["name"])),
        "data": {CONFIG_KEY: trainer_manifest(job)},
    }


def config_hash(job: dict[str, Any]) -> str:
    """A short digest of the job.yaml the pods read (annotation :data:`naming.ANNOTATION_CONFIG_HASH`):
    which ConfigMap content a pod was created against."""
    return hashlib.sha256(trainer_manifest(job).encode()).hexdigest()[:16]


def service(job: dict[str, Any], spec: FineTuneJobSpec) -> dict[str, Any]:
    """Headless Service: gives node 0 the stable DNS name MASTER_ADDR points at."""
    name = job["metadata"]["name"]
    ports = [{"name": "rendezvous", "port": DEFAULT_MASTER_PORT, "targetPort": DEFAULT_MASTER_PORT}]
    if spec.metrics.port:
        ports.append({"name": "metrics", "port": spec.metrics.port, "targetPort": spec.metrics.port})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, naming.service_name(name)),
        "spec": {
            "clusterIP": "None",
            "selector": naming.selector(name),
            "ports": ports,
            # Rendezvous needs node 0's DNS record before any readiness signal exists.
            "publishNotReadyAddresses": True,
        },
    }


def node_env(job: dict[str, Any], spec: FineTuneJobSpec, index: int) -> list[dict[str, Any]]:
    """torchrun's PET_* variables, the PyTorchJob-style ones, and the job's identity (its uid owns
    the output directory: ``trainer.ownership``)."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    master = naming.master_addr(name, ns)
    values = {
        "PET_NNODES": spec.numNodes,
        "PET_NPROC_PER_NODE": spec.numProcPerNode,
        "PET_NODE_RANK": index,
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": DEFAULT_MASTER_PORT,
        # torchrun waits this long for its ranks after SIGTERM (they checkpoint; torch's default is 30 s)
        "PET_SHUTDOWN_TIMEOUT": spec.terminationGracePeriodSeconds,
        "MASTER_ADDR": master,
        "MASTER_PORT": DEFAULT_MASTER_PORT,
        "WORLD_SIZE": spec.numNodes * spec.numProcPerNode,
        "RANK": index,
        "NODE_RANK": index,
        "NPROC_PER_NODE": spec.numProcPerNode,
        "KUBECLIP_JOB_NAME": name,
        "KUBECLIP_NAMESPACE": ns,
        "KUBECLIP_JOB_UID": job["metadata"].get("uid", ""),
    }
    return [{"name": k, "value": str(v)} for k, v in values.items()]


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    if spec.resources is None:
        return {}
    # Quantities travel as strings ("8", "64Gi"): the API's canonical form.
    limits = {k: str(v) for k, v in spec.resources.limits.items()}
    requests = {k: str(v) for k, v in spec.resources.requests.items()}
    if GPU_RESOURCE in limits or GPU_RESOURCE in requests:
        # One GPU per training process; extended resources need limits == requests.
        limits[GPU_RESOURCE] = requests[GPU_RESOURCE] = str(spec.numProcPerNode)
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod(job: dict[str, Any], spec: FineTuneJobSpec, index: int, attempt: int, image: str) -> dict[str, Any]:
    """Node ``index`` of attempt ``attempt`` (= status.restartCount when it was created)."""
    name = job["metadata"]["name"]
    ports = []
    if index == 0:
        ports.append({"name": "rendezvous", "containerPort": DEFAULT_MASTER_PORT})
    if spec.metrics.port:
        ports.append({"name": "metrics", "containerPort": spec.metrics.port})
    container: dict[str, Any] = {
        "name": naming.CONTAINER,
        "image": image,
        "command": list(COMMAND),
        "env": [e.model_dump(exclude_none=True) for e in spec.env] + node_env(job, spec, index),
        "ports": ports,
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": SHM_VOLUME, "mountPath": SHM_PATH},
            *(m.model_dump(exclude_none=True) for m in spec.volumeMounts),
        ],
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.imagePullPolicy:
        container["imagePullPolicy"] = spec.imagePullPolicy
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "hostname": naming.pod_name(name, index),
        "subdomain": naming.service_name(name),
        "restartPolicy": "Never",
        # SIGTERM -> SIGKILL: long enough for the ranks to finish a step and write a checkpoint
        "terminationGracePeriodSeconds": spec.terminationGracePeriodSeconds,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": CONFIG_VOLUME, "configMap": {"name": naming.configmap_name(name)}},
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}},
            *(v.model_dump(exclude_none=True) for v in spec.volumes),
        ],
    }
    optional = {
        "nodeSelector": dict(spec.nodeSelector) or None,
        "tolerations": [t.model_dump(exclude_none=True) for t in spec.tolerations] or None,
        "affinity": spec.affinity,
        "priorityClassName": spec.priorityClassName,
        "serviceAccountName": spec.serviceAccountName,
        "imagePullSecrets": [s.model_dump() for s in spec.imagePullSecrets] or None,
        "schedulerName": spec.schedulerName,
        "runtimeClassName": spec.runtimeClassName,
        "topologySpreadConstraints": [dict(c) for c in spec.topologySpreadConstraints] or None,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    if not spec.serviceAccountName:
        # The trainer never calls the API: no token in its pods unless the job asks for an identity.
        pod_spec["automountServiceAccountToken"] = False
    labels = {naming.LABEL_INDEX: str(index), naming.LABEL_ATTEMPT: str(attempt)}
    meta = _meta(job, naming.pod_name(name, index), labels)
    # The job's own labels and annotations first: the controller's keys win (the API refuses
    # kubeclip.dev/* keys anyway; this keeps an older CRD from taking a pod out of its job).
    meta["labels"] = {**spec.podLabels, **meta["labels"]}
    meta["annotations"] = {**spec.podAnnotations, naming.ANNOTATION_CONFIG_HASH: config_hash(job)}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
