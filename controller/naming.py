"""Deterministic names and labels of a FineTuneJob's children.

Who uses it and why it exists: the builders name what they create and the reconciler finds it
again by these names and labels, so every pass (and every controller replica) agrees on what a
job owns without remembering anything. Kubernetes limits labels and hostnames to 63 characters;
``<job>-node-<i>`` must fit, which bounds the job name (the CRD enforces :data:`MAX_JOB_NAME`).
"""

from __future__ import annotations

LABEL_JOB = "kubeclip.dev/job-name"
LABEL_INDEX = "kubeclip.dev/node-index"
#: The attempt (status.restartCount) a pod was created for: older pods are stale and deleted.
LABEL_ATTEMPT = "kubeclip.dev/attempt"
#: The digest of the ConfigMap's job.yaml a pod was created against (builders.config_hash).
ANNOTATION_CONFIG_HASH = "kubeclip.dev/config-hash"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "kubeclip-controller"
#: The trainer container's name (the reconciler reads its exit code).
CONTAINER = "trainer"
#: numNodes is at most 1024, so "-node-1023" (10 characters) must fit in a 63-character hostname.
MAX_JOB_NAME = 63 - len("-node-1023")


def pod_name(job: str, index: int) -> str:
    return f"{job}-node-{index}"


def service_name(job: str) -> str:
    return job


def configmap_name(job: str) -> str:
    return f"{job}-config"


def master_addr(job: str, namespace: str) -> str:
    """Node 0's DNS name through the headless Service (hostname + subdomain)."""
    return f"{pod_name(job, 0)}.{service_name(job)}.{namespace}.svc"


def selector(job: str) -> dict[str, str]:
    return {LABEL_JOB: job}
