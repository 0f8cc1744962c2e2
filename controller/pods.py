"""Pure reading of a job's pods and Nodes: is a pod failed and why, how is an attempt judged, is a
Node gone, and which pods to delete.

Who uses it and why it exists: the policy steps of :mod:`controller.reconcile` ask these questions
of the pods and Nodes a pass observed. Split out so the steps read as policy and these readers are
table-tested on their own (``tests/unit/test_reconcile.py``). Nothing here talks to the API or
reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubeclip.api import EXIT_RENDEZVOUS_TIMEOUT, FINAL_EXIT_CODES, SIGNAL_EXIT_BASE, Reason, signal_name

from . import naming
from .status import PodPhase, pod_phase, termination_text
from .times import parse_time

#: Pod status reasons (and DisruptionTarget reasons) that mean "the node or the scheduler took
#: the pod away", not "the trainer failed".
RETRYABLE_POD_REASONS = frozenset(
    {
        "Evicted",
        "Preempting",
        "NodeLost",
        "Shutdown",
        "Terminated",
        "NodeShutdown",
        "TerminationByKubelet",
        "PreemptionByScheduler",
        "EvictionByEvictionAPI",
        "DeletionByTaintManager",
        "DeletionByPodGC",
        "UnexpectedAdmissionError",
    }
)

#: Container waiting reasons that hold an attempt back without failing it (the kubelet retries
#: them): shown on the job (condition PodsWaiting, a Warning event) and ended by
#: runPolicy.startDeadlineSeconds. InvalidImageName never resolves: the job fails as InvalidSpec.
WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
INVALID_IMAGE_NAME = "InvalidImageName"
#: The PodScheduled condition's reason when no node fits the pod.
UNSCHEDULABLE = "Unschedulable"
#: Longest message taken from a pod into the job's status (the kubelet's text quotes the image
#: name and the scheduler's lists nodes; both are long in big clusters).
MESSAGE_MAX = 512

#: A pod still there this long after its deletionTimestamp (which already includes its grace
#: period) is force-deleted (grace 0) *if its node is known gone* (:func:`node_gone`): a
#: partitioned kubelet may still run it, and a second copy of node 0 would write the same
#: checkpoint directory. On a timer alone it is never force-deleted.
FORCE_DELETE_AFTER_S = 30.0
#: The taint an administrator sets on a node that is shut down for good (non-graceful node shutdown).
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"


@dataclass(frozen=True)
class Delete:
    kind: str  # "Pod"
    name: str
    uid: str | None = None  # precondition: never delete a newer object of the same name
    force: bool = False  # gracePeriodSeconds=0


@dataclass(frozen=True)
class Waiting:
    """Why a pod is not running yet (a container waiting reason or Unschedulable)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    """One failed pod. ``retryable=False`` is a final verdict of the trainer; ``disruption`` means the
    pod was taken away (evicted, preempted, node lost, deleted) rather than failing by itself."""

    retryable: bool
    reason: str
    message: str
    disruption: bool = False
    at: str = ""  # the container's finishedAt, to find the first failure of an attempt


def trainer_terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == naming.CONTAINER:
            return ((cs.get("state") or {}).get("terminated")) or None
    return None


def deleting(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def int_label(pod: dict[str, Any], key: str) -> int | None:
    """An integer label (node index, attempt); None when missing or not a number."""
    try:
        return int(pod["metadata"].get("labels", {}).get(key, ""))
    except ValueError:
        return None


def owned_by(pod: dict[str, Any], uid: str | None) -> bool:
    """Does the job with ``uid`` control this pod (a same-named job deleted earlier may leave pods)?"""
    return any(o.get("uid") == uid and o.get("controller") for o in pod["metadata"].get("ownerReferences") or [])


def classify(pod: dict[str, Any]) -> Failure | None:
    """Is this pod failed, and how? (docs/contracts.md, "Exit codes" and "Failure policy")."""
    name = pod["metadata"]["name"]
    st = pod.get("status") or {}
    phase = st.get("phase")
    if phase == PodPhase.SUCCEEDED:
        return None
    for cond in st.get("conditions") or []:  # set before the kill: the root cause of what follows
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return Failure(
                True, cond.get("reason") or Reason.DISRUPTED, f"{name}: {cond.get('message') or 'disrupted'}", True
            )
    if deleting(pod):
        return Failure(True, Reason.POD_DELETED, f"{name} was deleted", True)
    if phase == PodPhase.UNKNOWN:
        return Failure(True, Reason.NODE_LOST, f"{name}: node lost ({st.get('message') or 'phase Unknown'})", True)
    if phase != PodPhase.FAILED:
        return None
    if st.get("reason") in RETRYABLE_POD_REASONS:
        return Failure(True, st["reason"], f"{name}: {st.get('message') or st['reason']}", True)
    term = trainer_terminated(pod)
    if term is None:
        return Failure(
            True,
            st.get("reason") or Reason.POD_FAILED,
            f"{name} failed before the trainer ran: {st.get('message') or ''}".rstrip(": "),
        )
    code = int(term.get("exitCode") or 0)
    detail = termination_text(term)
    at = term.get("finishedAt") or ""
    text = f"{name} exited with code {code}" + (f": {detail}" if detail else "")
    if term.get("reason") == Reason.OOM_KILLED:  # the kubelet's reason, passed through as ours
        return Failure(True, Reason.OOM_KILLED, f"{name} was OOMKilled (exit code {code})", at=at)
    if code >= 128:
        return Failure(
            True,
            Reason.KILLED,
            f"{name} killed by {signal_name(code - SIGNAL_EXIT_BASE)} (exit code {code})"
            + (f": {detail}" if detail else ""),
            at=at,
        )
    if code in FINAL_EXIT_CODES:
        return Failure(False, FINAL_EXIT_CODES[code], text, at=at)
    if code == EXIT_RENDEZVOUS_TIMEOUT:
        return Failure(True, Reason.RENDEZVOUS_TIMEOUT, text, at=at)
    return Failure(True, Reason.TRAINER_FAILED, text, at=at)


def waiting(pod: dict[str, Any]) -> Waiting | None:
    """Why this pod waits (image pull, container config, no node fits), if it does for a reason
    :data:`WAITING_REASONS` knows; None for a pod that is just starting."""
    name = pod["metadata"]["name"]
    st = pod.get("status") or {}
    for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
        w = (cs.get("state") or {}).get("waiting") or {}
        if w.get("reason") in WAITING_REASONS:
            return Waiting(w["reason"], f"{name}: {w.get('message') or w['reason']}"[:MESSAGE_MAX])
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == UNSCHEDULABLE:
            return Waiting(UNSCHEDULABLE, f"{name}: {cond.get('message') or UNSCHEDULABLE}"[:MESSAGE_MAX])
    return None


#: On a finishedAt tie (one-second resolution) these causes are preferred: an OOM kill or a signal
#: is a root cause, a peer's exit 1 in the same second its knock-on.
_ROOT_CAUSES = (Reason.OOM_KILLED, Reason.KILLED)


def judge(failures: list[Failure]) -> Failure | None:
    """The verdict on one attempt from all its failed pods together.

    A disruption anywhere explains the rest (a peer's broken collective exits 1 or is killed):
    the attempt was disrupted. Otherwise a final verdict of the trainer ends the job; otherwise
    the attempt failed, and its first failure (earliest finishedAt; an OOM kill or a signal on a
    tie) is the cause.
    """
    if not failures:
        return None
    disrupted = [f for f in failures if f.disruption]
    if disrupted:
        return disrupted[0]
    final = [f for f in failures if not f.retryable]
    if final:
        return final[0]
    timed = sorted((f for f in failures if f.at), key=lambda f: (f.at, f.reason not in _ROOT_CAUSES))
    return timed[0] if timed else failures[0]


def node_gone(node: dict[str, Any] | None) -> str | None:
    """Why a Node is known gone, else None: the Node object no longer exists, or an administrator
    tainted it ``node.kubernetes.io/out-of-service`` (non-graceful node shutdown). The pod garbage
    collector's own rule; NotReady, however long, is not enough (a kubelet that stopped reporting
    may still run the pod, and the pod still reach the shared volume)."""
    if node is None:
        return "its node no longer exists"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("key") == OUT_OF_SERVICE_TAINT:
            return f"its node is tainted {OUT_OF_SERVICE_TAINT}"
    return None


def node_unhealthy(node: dict[str, Any] | None) -> str | None:
    """Why a Node cannot be trusted to keep a pod running (gone, or not Ready now), else None: used
    when judging an attempt, never to force a deletion."""
    gone = node_gone(node)
    if gone or node is None:
        return gone
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return f"its node is NotReady ({cond.get('reason') or cond.get('status')})"
    return None


def terminal(pod: dict[str, Any]) -> bool:
    """Has this pod finished (succeeded, failed, lost or being deleted)? Its peers of the same
    attempt are judged together once all are terminal (or the settle window is over)."""
    return pod_phase(pod) == PodPhase.SUCCEEDED or classify(pod) is not None


def _stuck(pod: dict[str, Any], now: datetime) -> bool:
    due = parse_time(pod["metadata"].get("deletionTimestamp"))
    return due is not None and (now - due).total_seconds() > FORCE_DELETE_AFTER_S


def delete(pods: list[dict[str, Any]], now: datetime, nodes: dict[str, dict[str, Any] | None]) -> tuple[Delete, ...]:
    """Delete pods not yet deleting; force-delete those stuck in deletion on a node known gone, or
    bound to no node at all (no kubelet can be running them)."""
    out = []
    for p in pods:
        meta = p["metadata"]
        if not deleting(p):
            out.append(Delete("Pod", meta["name"], meta.get("uid")))
        elif _stuck(p, now):
            node_name = (p.get("spec") or {}).get("nodeName")
            if not node_name or (node_name in nodes and node_gone(nodes[node_name])):
                out.append(Delete("Pod", meta["name"], meta.get("uid"), force=True))
    return tuple(out)


def cleanup(
    pods: list[dict[str, Any]], policy: str, now: datetime, nodes: dict[str, dict[str, Any] | None]
) -> tuple[Delete, ...]:
    """Pods to delete once the job has finished, per runPolicy.cleanPodPolicy."""
    if policy == "None":
        return ()
    if policy == "All":
        return delete(pods, now, nodes)
    return delete([p for p in pods if pod_phase(p) not in (PodPhase.SUCCEEDED, PodPhase.FAILED)], now, nodes)
