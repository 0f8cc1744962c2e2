"""The pure reconcile: ``plan(job, observed) -> Plan`` — what to create, delete and write.

Who uses it and why it exists: :mod:`controller.operator` runs one pass per watch event or
resync (read the job, list its children, ``plan``, apply); :mod:`controller.kube` applies the
plan. Nothing here talks to the API or reads the clock, so the whole failure policy is tested
with plain dicts (``tests/unit/test_reconcile*.py``). The pass is level-triggered: it rebuilds
the status from what exists and never asks "what just happened".

The restart bookkeeping is kept in the objects themselves: every pod carries the attempt it was
created for (label ``kubeclip.dev/attempt`` = ``status.restartCount`` at creation). A retryable
failure of a current pod increments ``restartCount`` in the *status write that comes first* in
the plan; the old pods are then stale and deleted, and the next attempt's pods are created once
their names are free. So a failure is counted exactly once, even when the controller dies half
way, and ``restartCount`` never exceeds ``runPolicy.backoffLimit``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from trainer.config import EXIT_CONFIG, EXIT_PREFLIGHT, ConfigError

from . import builders, naming
from .api import TERMINAL_PHASES, FineTuneJobSpec, parse_job_spec
from .status import completed_message, enter_phase, node_counts, parse_time, pod_phase, progress_status, resume, rfc3339

#: Pod status reasons (and DisruptionTarget reasons) that mean "the node or the scheduler took
#: the pod away", not "the trainer failed".
RETRYABLE_POD_REASONS = frozenset(
    {"Evicted", "Preempting", "NodeLost", "Shutdown", "Terminated", "NodeShutdown", "TerminationByKubelet",
     "PreemptionByScheduler", "EvictionByEvictionAPI", "DeletionByTaintManager", "DeletionByPodGC", "UnexpectedAdmissionError"}
)


@dataclass(frozen=True)
class Observed:
    """What exists now: the job's pods (any attempt), its Service and ConfigMap, node 0's progress."""

    pods: tuple[dict[str, Any], ...] = ()
    service: Optional[dict[str, Any]] = None
    configmap: Optional[dict[str, Any]] = None
    progress: Optional[dict[str, Any]] = None
    now: datetime = field(default_factory=lambda: datetime(1970, 1, 1))


#: A pod still there this long after its deletionTimestamp (which already includes its grace
#: period) is force-deleted (grace 0): its kubelet is gone (node lost) or never finished the
#: deletion, and its name blocks the next attempt's pod.
FORCE_DELETE_AFTER_S = 30.0


@dataclass(frozen=True)
class Delete:
    kind: str  # "Pod"
    name: str
    uid: Optional[str] = None  # precondition: never delete a newer object of the same name
    force: bool = False  # gracePeriodSeconds=0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    retryable: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """Apply in this order: status (optimistic concurrency), events, creates, updates, deletes."""

    status: Optional[dict[str, Any]] = None  # the new status, only when it differs
    events: tuple[Event, ...] = ()
    create: tuple[dict[str, Any], ...] = ()
    update: tuple[dict[str, Any], ...] = ()
    delete: tuple[Delete, ...] = ()
    delete_job: bool = False
    requeue_after: Optional[float] = None  # seconds until a deadline/TTL is due
    transition: Optional[str] = None  # the phase entered by this pass (metrics)

    @property
    def empty(self) -> bool:
        return not (self.status or self.events or self.create or self.update or self.delete or self.delete_job)


# ------------------------------------------------------------------------------------------
# reading pods
# ------------------------------------------------------------------------------------------


def _trainer_terminated(pod: dict[str, Any]) -> Optional[dict[str, Any]]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == naming.CONTAINER:
            return ((cs.get("state") or {}).get("terminated")) or None
    return None


def classify(pod: dict[str, Any]) -> Optional[Failure]:
    """Is this pod failed, and may a restart help? (docs/contracts.md, "Exit codes")."""
    name = pod["metadata"]["name"]
    if _deleting(pod):
        return Failure(True, "PodDeleted", f"{name} was deleted")
    st = pod.get("status") or {}
    phase = st.get("phase")
    if phase == "Unknown":
        return Failure(True, "NodeLost", f"{name}: node lost ({st.get('message') or 'phase Unknown'})")
    if phase != "Failed":
        return None
    for cond in st.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return Failure(True, cond.get("reason") or "Disrupted", f"{name}: {cond.get('message') or 'disrupted'}")
    if st.get("reason") in RETRYABLE_POD_REASONS:
        return Failure(True, st["reason"], f"{name}: {st.get('message') or st['reason']}")
    term = _trainer_terminated(pod)
    if term is None:
        return Failure(True, st.get("reason") or "PodFailed", f"{name} failed before the trainer ran: {st.get('message') or ''}".rstrip(": "))
    code = int(term.get("exitCode") or 0)
    detail = (term.get("message") or "").strip()
    text = f"{name} exited with code {code}" + (f": {detail}" if detail else "")
    if term.get("reason") == "OOMKilled":
        return Failure(True, "OOMKilled", f"{name} was OOMKilled (exit code {code})")
    if code >= 128:
        return Failure(True, "Killed", text)
    if code == EXIT_CONFIG:
        return Failure(False, "InvalidConfig", text)
    if code == EXIT_PREFLIGHT:
        return Failure(False, "PreflightFailed", text)
    return Failure(False, "TrainerFailed", text)


def _int_label(pod: dict[str, Any], key: str) -> Optional[int]:
    """An integer label (node index, attempt); None when missing or not a number."""
    try:
        return int(pod["metadata"].get("labels", {}).get(key, ""))
    except ValueError:
        return None


def _deleting(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _delete(pods: list[dict[str, Any]], now: datetime) -> tuple[Delete, ...]:
    """Delete pods not yet deleting; force-delete those stuck in deletion (see FORCE_DELETE_AFTER_S)."""
    out = []
    for p in pods:
        meta = p["metadata"]
        if not _deleting(p):
            out.append(Delete("Pod", meta["name"], meta.get("uid")))
        else:
            due = parse_time(meta.get("deletionTimestamp"))
            if due is not None and (now - due).total_seconds() > FORCE_DELETE_AFTER_S:
                out.append(Delete("Pod", meta["name"], meta.get("uid"), force=True))
    return tuple(out)


def cleanup(pods: list[dict[str, Any]], policy: str, now: datetime) -> tuple[Delete, ...]:
    """Pods to delete once the job has finished, per runPolicy.cleanPodPolicy."""
    if policy == "None":
        return ()
    if policy == "All":
        return _delete(pods, now)
    return _delete([p for p in pods if pod_phase(p) not in ("Succeeded", "Failed")], now)


# ------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------


def _finish(
    job: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]], phase: str, reason: str, message: str,
    policy: str, now: datetime, ttl: Optional[int],
) -> Plan:
    gen = job["metadata"].get("generation")
    new = enter_phase(status, phase, reason, message, gen, now)
    new["completionTime"] = rfc3339(now)
    return _plan(job, new, events=[], delete=cleanup(pods, policy, now), requeue_after=ttl if ttl else None, delete_job=ttl == 0)


def _plan(job: dict[str, Any], new_status: dict[str, Any], **kw: Any) -> Plan:
    """Build a Plan; the status goes in only if it differs, with an Event per transition."""
    old = job.get("status") or {}
    events = list(kw.pop("events", []))
    transition = None
    if (old.get("phase"), old.get("restartCount", 0)) != (new_status.get("phase"), new_status.get("restartCount", 0)):
        transition = new_status["phase"]
        kind = "Warning" if transition in ("Restarting", "Failed") else "Normal"
        events.append(Event(kind, new_status.get("reason") or transition, new_status.get("message") or transition))
    status = new_status if new_status != old else None
    return Plan(status=status, events=tuple(events), transition=transition, **{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


def plan(job: dict[str, Any], observed: Observed, *, default_image: str = "") -> Plan:
    """One reconcile pass for ``job`` (a FineTuneJob as the API returns it)."""
    meta = job["metadata"]
    uid, gen, now = meta.get("uid"), meta.get("generation"), observed.now
    old = job.get("status") or {}
    status = copy.deepcopy(old)
    status.setdefault("restartCount", 0)
    if gen is not None:
        status["observedGeneration"] = gen
    # Only pods this job controls (a same-named job deleted earlier may leave pods behind).
    pods = [
        p for p in observed.pods
        if any(o.get("uid") == uid and o.get("controller") for o in p["metadata"].get("ownerReferences") or [])
    ]
    raw_spec = job.get("spec") or {}
    policy = ((raw_spec.get("runPolicy") or {}).get("cleanPodPolicy")) or "Running"
    if policy not in ("Running", "All", "None"):
        policy = "Running"

    # Finished jobs stay finished: only cleanup and the TTL are left.
    if old.get("phase") in TERMINAL_PHASES:
        ttl = (raw_spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished")
        done = parse_time(old.get("completionTime"))
        due = None if ttl is None or done is None else (done - now).total_seconds() + ttl
        return _plan(
            job, status, delete=cleanup(pods, policy, now), delete_job=due is not None and due <= 0,
            requeue_after=due if due is not None and due > 0 else None,
        )

    try:
        spec = parse_job_spec(raw_spec)
        image = spec.image or default_image
        if not image:
            raise ConfigError("spec.image: empty, and the controller has no default image (--default-image)")
    except ConfigError as err:
        return _finish(job, status, pods, "Failed", "InvalidSpec", str(err), policy, now,
                       (raw_spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished"))
    rp = spec.runPolicy

    create: list[dict[str, Any]] = []
    update: list[dict[str, Any]] = []
    cm = builders.configmap(job)
    if observed.configmap is None:
        create.append(cm)
    elif (observed.configmap.get("data") or {}) != cm["data"]:
        update.append({**observed.configmap, "data": cm["data"]})
    if observed.service is None:
        create.append(builders.service(job, spec))

    attempt = int(status["restartCount"])
    current = {}
    for p in pods:
        index = _int_label(p, naming.LABEL_INDEX)
        if _int_label(p, naming.LABEL_ATTEMPT) == attempt and index is not None and 0 <= index < spec.numNodes:
            current[index] = p
    stale = [p for p in pods if p not in current.values()]
    status["nodes"] = node_counts(spec.numNodes, [p for p in current.values() if not _deleting(p)])

    # Suspension: no pods, the clock stops (startTime is set again on resume).
    if rp.suspend:
        if status.get("phase") != "Suspended":
            status = enter_phase(status, "Suspended", "Suspended", "runPolicy.suspend is true: pods deleted", gen, now)
        status.pop("startTime", None)
        status["nodes"] = node_counts(spec.numNodes, [])
        return _plan(job, status, create=create, update=update, delete=_delete(pods, now))
    if status.get("phase") == "Suspended":
        status = resume(status, gen, now)
    if status.get("phase") is None:
        status = enter_phase(status, "Created", "Created", f"creating {spec.numNodes} node pod(s)", gen, now)
    status.setdefault("startTime", rfc3339(now))

    requeue = None
    if rp.activeDeadlineSeconds is not None:
        started = parse_time(status["startTime"]) or now
        left = (started - now).total_seconds() + rp.activeDeadlineSeconds
        if left <= 0:
            return _finish(job, status, pods, "Failed", "DeadlineExceeded",
                           f"the job ran longer than runPolicy.activeDeadlineSeconds={rp.activeDeadlineSeconds}",
                           rp.cleanPodPolicy, now, rp.ttlSecondsAfterFinished)
        requeue = left

    node0 = current.get(0)
    if node0 is not None and pod_phase(node0) == "Succeeded" and not _deleting(node0):
        if observed.progress:
            status["progress"] = progress_status(observed.progress)
        return _finish(job, status, pods, "Succeeded", "Succeeded",
                       completed_message(node0["metadata"]["name"], _trainer_terminated(node0)),
                       rp.cleanPodPolicy, now, rp.ttlSecondsAfterFinished)

    failures = [f for f in (classify(p) for _, p in sorted(current.items(), key=lambda kv: kv[0])) if f]
    if status["phase"] == "Running":
        missing = [i for i in range(spec.numNodes) if i not in current]
        failures += [Failure(True, "PodDeleted", f"{naming.pod_name(meta['name'], i)} disappeared") for i in missing]
    fatal = next((f for f in failures if not f.retryable), None)
    if fatal is not None:
        return _finish(job, status, pods, "Failed", fatal.reason, fatal.message, rp.cleanPodPolicy, now, rp.ttlSecondsAfterFinished)
    if failures:
        cause = failures[0]
        if attempt >= rp.backoffLimit:
            return _finish(job, status, pods, "Failed", "BackoffLimitExceeded",
                           f"{cause.message}; runPolicy.backoffLimit={rp.backoffLimit} restarts used",
                           rp.cleanPodPolicy, now, rp.ttlSecondsAfterFinished)
        status["restartCount"] = attempt + 1
        status = enter_phase(status, "Restarting", cause.reason,
                             f"{cause.message}; restart {attempt + 1}/{rp.backoffLimit}, all pods recreated", gen, now)
        status["nodes"] = node_counts(spec.numNodes, [])
        return _plan(job, status, create=create, update=update, delete=_delete(pods, now), requeue_after=requeue)

    # Steady state: drop stale pods, create the missing ones whose names are free.
    taken = {p["metadata"]["name"] for p in observed.pods}  # foreign pods hold their names too
    for i in range(spec.numNodes):
        if i not in current and naming.pod_name(meta["name"], i) not in taken:
            create.append(builders.pod(job, spec, i, attempt, image))
    live = [p for p in current.values() if not _deleting(p)]
    if len(live) == spec.numNodes and all(pod_phase(p) in ("Running", "Succeeded") for p in live):
        if status["phase"] != "Running":
            status = enter_phase(status, "Running", "Running", f"all {spec.numNodes} node pod(s) running", gen, now)
        if observed.progress:
            status["progress"] = progress_status(observed.progress)
    for p in observed.pods:  # come back when a pod stuck in deletion becomes due for a force delete
        due = parse_time(p["metadata"].get("deletionTimestamp"))
        if due is not None:
            left = max(1.0, (due - now).total_seconds() + FORCE_DELETE_AFTER_S + 1)
            requeue = left if requeue is None else min(requeue, left)
    return _plan(job, status, create=create, update=update, delete=_delete(stale, now), requeue_after=requeue)
