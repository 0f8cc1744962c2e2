"""Queue admission: the planner step that hands a labelled job's start to Kueue (pure).

Who uses it and why it exists: :func:`controller.reconcile.plan` calls :func:`admit` for every
unfinished job and :func:`release` for finished ones. A job opts in with the label
``kueue.x-k8s.io/queue-name`` (and ``kueue.x-k8s.io/priority-class`` for a WorkloadPriorityClass);
Kueue then owns *when* it runs, kubeclip still owns *how*. The contract is the one Kueue's own
job integrations follow (``jobframework``), for a job kind registered under
``integrations.externalFrameworks``:

* one ``kueue.x-k8s.io/v1beta2`` Workload per job (:func:`workload_name`), owned by the job,
  label ``kueue.x-k8s.io/job-uid``, finalizer ``kueue.x-k8s.io/resource-in-use``, one pod set
  ``node`` of ``numNodes`` pods with the node pod as template;
* no pods until the Workload is ``Admitted``; the job is ``Queued`` with Kueue's reason;
* admitted: the pods carry the admitted ResourceFlavors' ``nodeLabels`` and ``tolerations``;
  ``PodsReady`` is written once every node runs (``waitForPodsReady`` all-or-nothing starts);
* ``Evicted`` (preemption, PodsReadyTimeout, deactivation, a stopped queue): the pods are deleted
  and, once none is left, the quota is given back (``status.admission`` cleared,
  ``QuotaReserved``/``Admitted`` False, ``Requeued`` True); the job is ``Queued`` again, never
  failed, nothing counted against ``backoffLimit``/``disruptionLimit``; the next admission starts
  the trainer again, which resumes from its latest checkpoint;
* finished (or its job deleted): ``Finished`` written and the finalizer removed, so the quota goes
  to the next job; ``runPolicy.suspend`` is the Workload's ``active: false``.

Nothing here talks to the API: the Workload (and the ResourceFlavors and WorkloadPriorityClass it
names) arrive in :class:`Observed`; writes leave as :class:`WorkloadWrite`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from kubeclip.api import Phase, Reason

from . import naming
from .status import set_condition

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
FINALIZER = "kueue.x-k8s.io/resource-in-use"
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
WORKLOADS = "workloads"
POD_SET = "node"
#: What a Workload left by a deleted job says when it is finished.
ORPHANED = "the FineTuneJob that owned this Workload was deleted"


class WorkloadCondition(StrEnum):
    """The Workload condition types this step reads and writes (Kueue's vocabulary, not the job's)."""

    QUOTA_RESERVED = "QuotaReserved"
    ADMITTED = "Admitted"
    EVICTED = "Evicted"
    PODS_READY = "PodsReady"
    REQUEUED = "Requeued"
    FINISHED = "Finished"


class WorkloadReason(StrEnum):
    """The reasons this step writes on Workload conditions (the ones Kueue itself uses for them)."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PENDING = "Pending"
    NO_RESERVATION = "NoReservation"
    WAIT_FOR_START = "WaitForStart"


#: How often a Queued job is looked at again when nothing changes (a Workload event also wakes it).
QUEUED_RECHECK_S = 5.0


@dataclass(frozen=True)
class Observed:
    """What the API said about the job's queueing. ``api`` False: the cluster has no Workload API.
    ``workloads``: every Workload labelled with the job's name (this job's and leftovers of a
    deleted job of the same name). ``flavors``: the ResourceFlavors the admission names (name ->
    object, None when missing). ``priority``: the WorkloadPriorityClass the label names (None when
    missing or not asked for)."""

    api: bool = True
    forbidden: bool = False  # the Workload API exists but the controller may not read it (chart RBAC)
    workloads: tuple[dict[str, Any], ...] = ()
    flavors: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    priority: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkloadWrite:
    """``status``: PUT workloads/status with ``body``; ``object``: PUT the Workload (finalizers, active)."""

    what: str  # "status" | "object"
    body: dict[str, Any]


@dataclass(frozen=True)
class Gate:
    """The step's verdict. ``hold``: the job may not run pods now — the planner writes ``phase``
    (``Queued``, ``Failed`` or ``None`` for "keep it") with ``reason``/``message``, deletes all the
    job's pods and stops there. Otherwise the pods are created with ``node_labels``/``tolerations``
    merged in. ``create``/``writes`` go out either way; ``admitted_by`` names the ClusterQueue."""

    hold: bool = False
    phase: Phase | None = None
    reason: str = ""
    message: str = ""
    create: tuple[dict[str, Any], ...] = ()
    writes: tuple[WorkloadWrite, ...] = ()
    node_labels: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    admitted_by: str | None = None
    requeue_after: float | None = None


def queue_name(job: dict[str, Any]) -> str | None:
    """The LocalQueue the job asks for, or None (the job does not use Kueue)."""
    value = ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL)
    return value or None


def workload_name(job_name: str) -> str:
    """``finetunejob-<job>``: job names are at most 53 characters, so this fits a DNS subdomain."""
    return f"finetunejob-{job_name}"


def _cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _true(obj: dict[str, Any] | None, type_: str) -> bool:
    c = _cond(obj, type_)
    return c is not None and c.get("status") == "True"


def _owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    return any(o.get("uid") == uid and o.get("controller") for o in obj["metadata"].get("ownerReferences") or [])


def build_workload(
    job: dict[str, Any], template_pod: dict[str, Any], num_nodes: int, active: bool, priority: dict[str, Any] | None
) -> dict[str, Any]:
    """The Workload for ``job``: one pod set of ``num_nodes`` pods shaped like ``template_pod``."""
    from .builders import owner_reference

    meta = job["metadata"]
    spec: dict[str, Any] = {
        "queueName": queue_name(job),
        "active": active,
        "podSets": [
            {
                "name": POD_SET,
                "count": num_nodes,
                "template": {
                    "metadata": {"labels": dict(template_pod["metadata"].get("labels") or {})},
                    "spec": copy.deepcopy(template_pod["spec"]),
                },
            }
        ],
    }
    if priority is not None:
        # The CRD wants the reference and the value together; Kueue reads the value from here.
        spec["priorityClassRef"] = {
            "group": GROUP,
            "kind": "WorkloadPriorityClass",
            "name": priority["metadata"]["name"],
        }
        spec["priority"] = int(priority.get("value") or 0)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {
            "name": workload_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": {
                JOB_UID_LABEL: meta["uid"],
                naming.LABEL_JOB: meta["name"],
                naming.LABEL_MANAGED: naming.MANAGER,
            },
            "finalizers": [FINALIZER],
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }


def _finish(wl: dict[str, Any], reason: str, message: str, now: datetime) -> tuple[WorkloadWrite, ...]:
    """``Finished`` on the Workload's status, then its finalizer off (each only if not done yet)."""
    out = []
    if not _true(wl, WorkloadCondition.FINISHED):
        status = copy.deepcopy(wl.get("status") or {})
        status["conditions"] = set_condition(
            status.get("conditions") or [], WorkloadCondition.FINISHED, "True", reason, message, None, now
        )
        out.append(WorkloadWrite("status", {**wl, "status": status}))
    finalizers = list(wl["metadata"].get("finalizers") or [])
    if FINALIZER in finalizers:
        finalizers.remove(FINALIZER)
        out.append(WorkloadWrite("object", {**wl, "metadata": {**wl["metadata"], "finalizers": finalizers}}))
    return tuple(out)


def release(job: dict[str, Any], observed: Observed, now: datetime) -> tuple[WorkloadWrite, ...]:
    """For a finished job (and for leftovers of a deleted job of the same name): ``Finished`` and the
    finalizer off, so Kueue gives the quota to the next job."""
    uid = job["metadata"].get("uid")
    phase = (job.get("status") or {}).get("phase")
    reason = WorkloadReason.SUCCEEDED if phase == Phase.SUCCEEDED else WorkloadReason.FAILED
    message = (job.get("status") or {}).get("message") or f"the FineTuneJob {phase or 'ended'}"
    out: list[WorkloadWrite] = []
    for wl in observed.workloads:
        if _owned_by(wl, uid):
            out += _finish(wl, reason, message[:1024], now)
        else:
            out += _finish(wl, WorkloadReason.FAILED, ORPHANED, now)
    return tuple(out)


def release_orphans(workloads: list[dict[str, Any]], now: datetime) -> tuple[WorkloadWrite, ...]:
    """For a job that no longer exists: every Workload it left is finished and let go."""
    out: list[WorkloadWrite] = []
    for wl in workloads:
        out += _finish(wl, WorkloadReason.FAILED, ORPHANED, now)
    return tuple(out)


def _pending_message(wl: dict[str, Any]) -> str:
    """Kueue's reason a Workload is not admitted (QuotaReserved=False's message), else a default."""
    for type_ in (WorkloadCondition.QUOTA_RESERVED, WorkloadCondition.ADMITTED):
        c = _cond(wl, type_)
        if c is not None and c.get("status") == "False" and c.get("message"):
            return str(c["message"])
    return f"Workload {wl['metadata']['name']} not admitted yet"


def _give_back(wl: dict[str, Any], evicted: dict[str, Any], now: datetime) -> WorkloadWrite:
    """After an eviction, once no pod is left: the quota is released and the Workload requeued."""
    status = copy.deepcopy(wl.get("status") or {})
    status.pop("admission", None)
    conds = status.get("conditions") or []
    why = evicted.get("reason") or WorkloadCondition.EVICTED
    text = f"the pods are gone after the eviction ({evicted.get('message') or why})"
    conds = set_condition(conds, WorkloadCondition.QUOTA_RESERVED, "False", WorkloadReason.PENDING, text, None, now)
    if _cond(wl, WorkloadCondition.ADMITTED) is not None:
        conds = set_condition(
            conds,
            WorkloadCondition.ADMITTED,
            "False",
            WorkloadReason.NO_RESERVATION,
            "the workload has no reservation",
            None,
            now,
        )
    if _cond(wl, WorkloadCondition.PODS_READY) is not None:
        conds = set_condition(
            conds,
            WorkloadCondition.PODS_READY,
            "False",
            WorkloadReason.WAIT_FOR_START,
            "evicted: no pods run",
            None,
            now,
        )
    conds = set_condition(conds, WorkloadCondition.REQUEUED, "True", why, text, None, now)
    status["conditions"] = conds
    return WorkloadWrite("status", {**wl, "status": status})


def admit(
    job: dict[str, Any],
    *,
    template_pod: dict[str, Any],
    num_nodes: int,
    suspend: bool,
    pods: list[dict[str, Any]],
    pods_running: bool,
    observed: Observed,
    now: datetime,
) -> Gate | None:
    """The queue-admission verdict for an unfinished job; None when the job does not use Kueue.

    ``template_pod`` is node 0's pod as the builders make it (the Workload's pod template);
    ``pods`` are the job's pods (any attempt, deleting ones included); ``pods_running`` tells that
    all ``num_nodes`` pods of the current attempt run (PodsReady)."""
    queue = queue_name(job)
    if queue is None:
        return None
    meta = job["metadata"]
    if observed.forbidden:
        return Gate(
            hold=True,
            phase=Phase.FAILED,
            reason=Reason.QUEUE_UNAVAILABLE,
            message=f"label {QUEUE_LABEL}={queue} asks for Kueue, but the controller may not read "
            f"{GROUP} Workloads: install the chart with kueue.enabled=true, or remove the label",
        )
    if not observed.api:
        return Gate(
            hold=True,
            phase=Phase.FAILED,
            reason=Reason.QUEUE_UNAVAILABLE,
            message=f"label {QUEUE_LABEL}={queue} asks for Kueue, but this cluster has no {GROUP}/{VERSION} "
            "Workload API: install Kueue, or remove the label",
        )
    mine = [wl for wl in observed.workloads if _owned_by(wl, meta.get("uid"))]
    # Leftovers of a deleted job of the same name: let them go, so they hold no quota.
    writes: list[WorkloadWrite] = []
    for wl in observed.workloads:
        if wl not in mine:
            writes += _finish(wl, WorkloadReason.FAILED, ORPHANED, now)
    priority_name = (meta.get("labels") or {}).get(PRIORITY_LABEL)
    if not mine:
        if priority_name and observed.priority is None:
            return Gate(
                hold=True,
                phase=Phase.QUEUED,
                reason=Reason.QUEUE_PRIORITY_CLASS_MISSING,
                message=f"WorkloadPriorityClass {priority_name} ({PRIORITY_LABEL}) does not exist",
                writes=tuple(writes),
                requeue_after=30.0,
            )
        wl = build_workload(job, template_pod, num_nodes, not suspend, observed.priority if priority_name else None)
        return Gate(
            hold=True,
            phase=Phase.SUSPENDED if suspend else Phase.QUEUED,
            reason=Reason.SUSPENDED if suspend else Reason.QUEUED,
            message="runPolicy.suspend is true: pods deleted"
            if suspend
            else f"Workload {wl['metadata']['name']} created in LocalQueue {queue}: waiting for Kueue to admit it",
            create=(wl,),
            writes=tuple(writes),
        )
    wl = mine[0]
    spec = wl.get("spec") or {}
    if bool(spec.get("active", True)) == suspend:  # runPolicy.suspend <-> spec.active
        writes.append(WorkloadWrite("object", {**wl, "spec": {**spec, "active": not suspend}}))
    if suspend:
        return Gate(
            hold=True,
            phase=Phase.SUSPENDED,
            reason=Reason.SUSPENDED,
            message="runPolicy.suspend is true: pods deleted",
            writes=tuple(writes),
        )

    evicted = _cond(wl, WorkloadCondition.EVICTED)
    if evicted is not None and evicted.get("status") == "True":
        why = evicted.get("reason") or WorkloadCondition.EVICTED
        text = evicted.get("message") or "evicted by Kueue"
        if not pods and (wl.get("status") or {}).get("admission") is not None:
            writes.append(_give_back(wl, evicted, now))
        return Gate(
            hold=True,
            phase=Phase.QUEUED,
            reason=f"Evicted{why}" if why != WorkloadCondition.EVICTED else why,
            message=f"evicted by Kueue ({why}): {text}; pods stopped, waiting to be admitted again",
            writes=tuple(writes),
            requeue_after=2.0 if pods else QUEUED_RECHECK_S,
        )
    admission = (wl.get("status") or {}).get("admission")
    if not _true(wl, WorkloadCondition.ADMITTED) or admission is None:
        text = _pending_message(wl)
        return Gate(
            hold=True,
            phase=Phase.QUEUED,
            reason=Reason.QUEUED,
            message=f"waiting in LocalQueue {queue}: {text}",
            writes=tuple(writes),
            requeue_after=QUEUED_RECHECK_S,
        )

    labels: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    for assignment in admission.get("podSetAssignments") or []:
        for flavor_name in sorted(set((assignment.get("flavors") or {}).values())):
            flavor = observed.flavors.get(flavor_name)
            if flavor is None:
                return Gate(
                    hold=True,
                    phase=None,
                    reason=Reason.QUEUED,
                    message=f"admitted, but ResourceFlavor {flavor_name} cannot be read",
                    writes=tuple(writes),
                    requeue_after=QUEUED_RECHECK_S,
                )
            fspec = flavor.get("spec") or {}
            labels.update(fspec.get("nodeLabels") or {})
            tolerations += [t for t in fspec.get("tolerations") or [] if t not in tolerations]
    if pods_running and not _true(wl, WorkloadCondition.PODS_READY):
        status = copy.deepcopy(wl.get("status") or {})
        status["conditions"] = set_condition(
            status.get("conditions") or [],
            "PodsReady",
            "True",
            "Started",
            f"all {num_nodes} node pod(s) running",
            None,
            now,
        )
        writes.append(WorkloadWrite("status", {**wl, "status": status}))
    return Gate(
        node_labels=labels,
        tolerations=tuple(tolerations),
        admitted_by=admission.get("clusterQueue"),
        writes=tuple(writes),
    )


def place(pod: dict[str, Any], gate: Gate) -> dict[str, Any]:
    """The pod with the admitted flavors' node labels and tolerations merged in (the flavor wins
    on a node label both name: it is where the quota was reserved)."""
    if not gate.node_labels and not gate.tolerations:
        return pod
    spec = dict(pod["spec"])
    if gate.node_labels:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **gate.node_labels}
    if gate.tolerations:
        have = list(spec.get("tolerations") or [])
        spec["tolerations"] = have + [t for t in gate.tolerations if t not in have]
    return {**pod, "spec": spec}


__all__ = [
    "FINALIZER",
    "PRIORITY_LABEL",
    "QUEUE_LABEL",
    "Gate",
    "Observed",
    "WorkloadWrite",
    "admit",
    "build_workload",
    "place",
    "queue_name",
    "release",
    "release_orphans",
    "workload_name",
]
