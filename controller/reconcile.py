"""The pure reconcile: ``plan(job, observed) -> Plan`` — what to create, delete and write.

Who uses it and why it exists: :mod:`controller.operator` runs one pass per watch event or
resync (read the job, list its children, ``plan``, apply); :mod:`controller.kube` applies the
plan. Nothing here talks to the API or reads the clock, so the whole failure policy is tested
with plain dicts (``tests/unit/test_reconcile*.py``). The pass is level-triggered: it rebuilds
the status from what exists and never asks "what just happened".

The restart bookkeeping is kept in the objects themselves: every pod carries the attempt it was
created for (label ``kubeclip.dev/attempt`` = ``status.restartCount`` at creation). All failed
pods of the current attempt are judged together (:func:`judge`, the Job controller's shape: a
disruption anywhere makes the attempt disrupted, only the trainer's own verdicts are final). A
restart increments ``restartCount`` and ``failedAttempts`` or ``disruptedAttempts`` in the
*status write that comes first* in the plan; the old pods are then stale and deleted, and the
next attempt's pods are created once their names are free and ``status.nextAttemptTime`` (the
exponential restart delay) has passed. So a failure is counted exactly once, even when the
controller dies half way, and neither counter exceeds its limit (``runPolicy.backoffLimit``,
``runPolicy.disruptionLimit``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from kubeclip.api import EXIT_RENDEZVOUS_TIMEOUT, FINAL_EXIT_CODES, TERMINAL_PHASES, ConfigError, Reason, parse_job_spec

from . import builders, naming, queue
from .status import (
    completed_message,
    enter_phase,
    final_progress,
    node_counts,
    pod_phase,
    progress_status,
    resume,
    termination_text,
)
from .times import parse_time, rfc3339

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


@dataclass(frozen=True)
class Observed:
    """What exists now: the job's pods (any attempt), its Service and ConfigMap, node 0's progress,
    and the Nodes of pods stuck in deletion (name -> Node, or None when the Node does not exist;
    a name not in the map was not looked at)."""

    pods: tuple[dict[str, Any], ...] = ()
    service: dict[str, Any] | None = None
    configmap: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    now: datetime = field(default_factory=lambda: datetime(1970, 1, 1, tzinfo=timezone.utc))
    nodes: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    queue: queue.Observed = field(default_factory=queue.Observed)  # Kueue: the job's Workload (controller/queue.py)


#: A pod still there this long after its deletionTimestamp (which already includes its grace
#: period) is force-deleted (grace 0) *if its node is known gone* (:func:`node_gone`): a
#: partitioned kubelet may still run it, and a second copy of node 0 would write the same
#: checkpoint directory. On a timer alone it is never force-deleted.
FORCE_DELETE_AFTER_S = 30.0
#: A Node NotReady for this long counts as gone (the kubelet stopped reporting).
NODE_LOST_AFTER_S = 300.0
#: While a pod is stuck in deletion the job is looked at again this often (Node changes trigger
#: no pass of their own).
NODE_RECHECK_S = 30.0
#: The taint an administrator sets on a node that is shut down for good (non-graceful node shutdown).
OUT_OF_SERVICE_TAINT = "node.kubernetes.io/out-of-service"
#: Delay before the next attempt: RESTART_DELAY_S doubling per restart up to RESTART_DELAY_CAP_S
#: (the Job controller's 10 s -> 6 min). The controller's settings may change both.
RESTART_DELAY_S = 10.0
RESTART_DELAY_CAP_S = 360.0


@dataclass(frozen=True)
class Delete:
    kind: str  # "Pod"
    name: str
    uid: str | None = None  # precondition: never delete a newer object of the same name
    force: bool = False  # gracePeriodSeconds=0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
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


@dataclass(frozen=True)
class Plan:
    """Apply in this order: status (optimistic concurrency), events, creates, updates, deletes."""

    status: dict[str, Any] | None = None  # the new status, only when it differs
    events: tuple[Event, ...] = ()
    create: tuple[dict[str, Any], ...] = ()
    update: tuple[dict[str, Any], ...] = ()
    delete: tuple[Delete, ...] = ()
    delete_job: bool = False
    requeue_after: float | None = None  # seconds until a deadline/TTL is due
    transition: str | None = None  # the phase entered by this pass (metrics)
    workloads: tuple[queue.WorkloadWrite, ...] = ()  # Kueue Workload writes, after the updates

    @property
    def empty(self) -> bool:
        return not (
            self.status or self.events or self.create or self.update or self.delete or self.delete_job or self.workloads
        )


# ------------------------------------------------------------------------------------------
# reading pods
# ------------------------------------------------------------------------------------------


def _trainer_terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == naming.CONTAINER:
            return ((cs.get("state") or {}).get("terminated")) or None
    return None


def _set_final_progress(status: dict[str, Any], pod: dict[str, Any] | None) -> bool:
    """status.progress from the final progress in node 0's termination message, if it left one
    (docs/contracts.md, "Progress"); checkpoints reported skipped while it ran stay listed."""
    final = final_progress(_trainer_terminated(pod)) if pod is not None else None
    if final is None:
        return False
    new = progress_status(final)
    skipped = (status.get("progress") or {}).get("skippedCheckpoints")
    if skipped and "skippedCheckpoints" not in new:
        new["skippedCheckpoints"] = skipped
    status["progress"] = new
    return True


def _signal_name(code: int) -> str:
    import signal

    try:
        return signal.Signals(code - 128).name
    except ValueError:
        return f"signal {code - 128}"


def classify(pod: dict[str, Any]) -> Failure | None:
    """Is this pod failed, and how? (docs/contracts.md, "Exit codes" and "Failure policy")."""
    name = pod["metadata"]["name"]
    st = pod.get("status") or {}
    phase = st.get("phase")
    if phase == "Succeeded":
        return None
    for cond in st.get("conditions") or []:  # set before the kill: the root cause of what follows
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return Failure(
                True, cond.get("reason") or Reason.DISRUPTED, f"{name}: {cond.get('message') or 'disrupted'}", True
            )
    if _deleting(pod):
        return Failure(True, Reason.POD_DELETED, f"{name} was deleted", True)
    if phase == "Unknown":
        return Failure(True, Reason.NODE_LOST, f"{name}: node lost ({st.get('message') or 'phase Unknown'})", True)
    if phase != "Failed":
        return None
    if st.get("reason") in RETRYABLE_POD_REASONS:
        return Failure(True, st["reason"], f"{name}: {st.get('message') or st['reason']}", True)
    term = _trainer_terminated(pod)
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
    if term.get("reason") == "OOMKilled":
        return Failure(True, Reason.OOM_KILLED, f"{name} was OOMKilled (exit code {code})", at=at)
    if code >= 128:
        return Failure(
            True,
            Reason.KILLED,
            f"{name} killed by {_signal_name(code)} (exit code {code})" + (f": {detail}" if detail else ""),
            at=at,
        )
    if code in FINAL_EXIT_CODES:
        return Failure(False, FINAL_EXIT_CODES[code], text, at=at)
    if code == EXIT_RENDEZVOUS_TIMEOUT:
        return Failure(True, Reason.RENDEZVOUS_TIMEOUT, text, at=at)
    return Failure(True, Reason.TRAINER_FAILED, text, at=at)


def judge(failures: list[Failure]) -> Failure | None:
    """The verdict on one attempt from all its failed pods together.

    A disruption anywhere explains the rest (a peer's broken collective exits 1 or is killed):
    the attempt was disrupted. Otherwise a final verdict of the trainer ends the job; otherwise
    the attempt failed, and its first failure (earliest finishedAt) is the cause.
    """
    if not failures:
        return None
    disrupted = [f for f in failures if f.disruption]
    if disrupted:
        return disrupted[0]
    final = [f for f in failures if not f.retryable]
    if final:
        return final[0]
    timed = sorted((f for f in failures if f.at), key=lambda f: f.at)
    return timed[0] if timed else failures[0]


def node_gone(node: dict[str, Any] | None, now: datetime) -> str | None:
    """Why a Node is known gone (missing, out-of-service taint, NotReady too long), else None."""
    if node is None:
        return "its node no longer exists"
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("key") == OUT_OF_SERVICE_TAINT:
            return f"its node is tainted {OUT_OF_SERVICE_TAINT}"
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            since = parse_time(cond.get("lastTransitionTime"))
            if since is not None and (now - since).total_seconds() >= NODE_LOST_AFTER_S:
                return f"its node has been NotReady for {int((now - since).total_seconds())}s"
    return None


def _int_label(pod: dict[str, Any], key: str) -> int | None:
    """An integer label (node index, attempt); None when missing or not a number."""
    try:
        return int(pod["metadata"].get("labels", {}).get(key, ""))
    except ValueError:
        return None


def _deleting(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _stuck(pod: dict[str, Any], now: datetime) -> bool:
    due = parse_time(pod["metadata"].get("deletionTimestamp"))
    return due is not None and (now - due).total_seconds() > FORCE_DELETE_AFTER_S


def _delete(pods: list[dict[str, Any]], now: datetime, nodes: dict[str, dict[str, Any] | None]) -> tuple[Delete, ...]:
    """Delete pods not yet deleting; force-delete those stuck in deletion on a node known gone, or
    bound to no node at all (no kubelet can be running them)."""
    out = []
    for p in pods:
        meta = p["metadata"]
        if not _deleting(p):
            out.append(Delete("Pod", meta["name"], meta.get("uid")))
        elif _stuck(p, now):
            node_name = (p.get("spec") or {}).get("nodeName")
            if not node_name or (node_name in nodes and node_gone(nodes[node_name], now)):
                out.append(Delete("Pod", meta["name"], meta.get("uid"), force=True))
    return tuple(out)


def cleanup(
    pods: list[dict[str, Any]], policy: str, now: datetime, nodes: dict[str, dict[str, Any] | None]
) -> tuple[Delete, ...]:
    """Pods to delete once the job has finished, per runPolicy.cleanPodPolicy."""
    if policy == "None":
        return ()
    if policy == "All":
        return _delete(pods, now, nodes)
    return _delete([p for p in pods if pod_phase(p) not in ("Succeeded", "Failed")], now, nodes)


def restart_delay(restarts: int, base: float = RESTART_DELAY_S, cap: float = RESTART_DELAY_CAP_S) -> float:
    """Seconds before attempt ``restarts + 1``: base, 2*base, 4*base ... up to cap (Job-like)."""
    return min(cap, base * float(2 ** min(restarts, 30)))


# ------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------


def _finish(
    job: dict[str, Any],
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    phase: str,
    reason: str,
    message: str,
    policy: str,
    observed: Observed,
    ttl: int | None,
) -> Plan:
    now = observed.now
    gen = job["metadata"].get("generation")
    new = enter_phase(status, phase, reason, message, gen, now)
    new["completionTime"] = rfc3339(now)
    new.pop("nextAttemptTime", None)
    return _plan(
        job,
        new,
        events=[],
        delete=cleanup(pods, policy, now, observed.nodes),
        requeue_after=ttl if ttl else None,
        delete_job=ttl == 0,
    )


def _plan(job: dict[str, Any], new_status: dict[str, Any], **kw: Any) -> Plan:
    """Build a Plan; the status goes in only if it differs, with an Event per transition (and a
    Warning when the trainer reports checkpoints it had to resume past)."""
    old = job.get("status") or {}
    events = list(kw.pop("events", []))
    skipped = (new_status.get("progress") or {}).get("skippedCheckpoints")
    if skipped and skipped != (old.get("progress") or {}).get("skippedCheckpoints"):
        events.append(
            Event(
                "Warning",
                Reason.CHECKPOINT_FALLBACK,
                f"the trainer could not read {len(skipped)} checkpoint(s) and resumed from an older one: "
                + "; ".join(skipped),
            )
        )
    transition = None
    if (old.get("phase"), old.get("restartCount", 0)) != (new_status.get("phase"), new_status.get("restartCount", 0)):
        transition = new_status["phase"]
        kind = "Warning" if transition in ("Restarting", "Failed") else "Normal"
        events.append(Event(kind, new_status.get("reason") or transition, new_status.get("message") or transition))
    status = new_status if new_status != old else None
    rest: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return Plan(status=status, events=tuple(events), transition=transition, **rest)


def plan(
    job: dict[str, Any],
    observed: Observed,
    *,
    default_image: str = "",
    restart_delay_s: float = RESTART_DELAY_S,
    restart_delay_cap_s: float = RESTART_DELAY_CAP_S,
) -> Plan:
    """One reconcile pass for ``job`` (a FineTuneJob as the API returns it)."""
    meta = job["metadata"]
    uid, gen, now, nodes = meta.get("uid"), meta.get("generation"), observed.now, observed.nodes
    old = job.get("status") or {}
    status = copy.deepcopy(old)
    status.setdefault("restartCount", 0)
    if gen is not None:
        status["observedGeneration"] = gen
    # Only pods this job controls (a same-named job deleted earlier may leave pods behind).
    pods = [
        p
        for p in observed.pods
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
            job,
            status,
            delete=cleanup(pods, policy, now, nodes),
            delete_job=due is not None and due <= 0,
            requeue_after=due if due is not None and due > 0 else None,
            workloads=queue.release(job, observed.queue, now),  # Kueue: Finished, quota given back
        )

    try:
        spec = parse_job_spec(raw_spec)
        image = spec.image or default_image
        if not image:
            raise ConfigError("spec.image: empty, and the controller has no default image (--default-image)")
    except ConfigError as err:
        return _finish(
            job,
            status,
            pods,
            "Failed",
            Reason.INVALID_SPEC,
            str(err),
            policy,
            observed,
            (raw_spec.get("runPolicy") or {}).get("ttlSecondsAfterFinished"),
        )
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

    # Queue admission (controller/queue.py): a job labelled kueue.x-k8s.io/queue-name runs pods
    # only while Kueue admits its Workload; waiting or evicted, it is Queued with no pods.
    gate = _queue_gate(job, spec, image, attempt, current, pods, observed)
    if gate is not None and gate.hold and gate.phase != "Suspended":
        return _held(job, status, gate, spec, pods, observed, create, update, policy)
    writes = gate.writes if gate is not None else ()

    def with_writes(p: Plan) -> Plan:
        return replace(p, workloads=p.workloads + writes) if writes else p

    # Suspension: no pods, the clock stops (startTime is set again on resume).
    if rp.suspend:
        if status.get("phase") != "Suspended":
            status = enter_phase(status, "Suspended", "Suspended", "runPolicy.suspend is true: pods deleted", gen, now)
        status.pop("startTime", None)
        status["nodes"] = node_counts(spec.numNodes, [])
        status.pop("nextAttemptTime", None)
        return with_writes(
            _plan(
                job,
                status,
                create=create + list(gate.create if gate else ()),
                update=update,
                delete=_delete(pods, now, nodes),
            )
        )
    if status.get("phase") == "Suspended":
        status = resume(status, gen, now)
    if gate is not None and status.get("phase") == "Queued":
        status = queue_admitted(status, gate, spec.numNodes, gen, now)
    if status.get("phase") is None:
        status = enter_phase(status, "Created", "Created", f"creating {spec.numNodes} node pod(s)", gen, now)
    status.setdefault("startTime", rfc3339(now))

    requeue = None
    if rp.activeDeadlineSeconds is not None:
        started = parse_time(status["startTime"]) or now
        left = (started - now).total_seconds() + rp.activeDeadlineSeconds
        if left <= 0:
            return with_writes(
                _finish(
                    job,
                    status,
                    pods,
                    "Failed",
                    Reason.DEADLINE_EXCEEDED,
                    f"the job ran longer than runPolicy.activeDeadlineSeconds={rp.activeDeadlineSeconds}",
                    rp.cleanPodPolicy,
                    observed,
                    rp.ttlSecondsAfterFinished,
                )
            )
        requeue = left

    node0 = current.get(0)
    if node0 is not None and pod_phase(node0) == "Succeeded" and not _deleting(node0):
        # The trainer's own final figures; /progress only if it left none (it stops serving on exit).
        if not _set_final_progress(status, node0) and observed.progress:
            status["progress"] = progress_status(observed.progress)
        return with_writes(
            _finish(
                job,
                status,
                pods,
                "Succeeded",
                "Succeeded",
                completed_message(node0["metadata"]["name"], _trainer_terminated(node0)),
                rp.cleanPodPolicy,
                observed,
                rp.ttlSecondsAfterFinished,
            )
        )

    failures = [f for f in (classify(p) for _, p in sorted(current.items(), key=lambda kv: kv[0])) if f]
    if status["phase"] == "Running":
        missing = [i for i in range(spec.numNodes) if i not in current]
        failures += [
            Failure(True, Reason.POD_DELETED, f"{naming.pod_name(meta['name'], i)} disappeared", True) for i in missing
        ]
    cause = judge(failures)
    if cause is not None and not cause.retryable:
        _set_final_progress(status, node0)  # rank 0's progress at its verdict, when node 0 has exited
        return with_writes(
            _finish(
                job,
                status,
                pods,
                "Failed",
                cause.reason,
                cause.message,
                rp.cleanPodPolicy,
                observed,
                rp.ttlSecondsAfterFinished,
            )
        )
    if cause is not None:
        disrupted = int(status.get("disruptedAttempts", 0))
        failed = int(status.get("failedAttempts", max(0, attempt - disrupted)))  # jobs from before these fields
        counted = failed + (disrupted if rp.countDisruptions else 0)
        if cause.disruption and disrupted >= rp.disruptionLimit:
            return with_writes(
                _finish(
                    job,
                    status,
                    pods,
                    "Failed",
                    Reason.DISRUPTION_LIMIT_EXCEEDED,
                    f"{cause.message}; runPolicy.disruptionLimit={rp.disruptionLimit} restarts used",
                    rp.cleanPodPolicy,
                    observed,
                    rp.ttlSecondsAfterFinished,
                )
            )
        if (not cause.disruption or rp.countDisruptions) and counted >= rp.backoffLimit:
            return with_writes(
                _finish(
                    job,
                    status,
                    pods,
                    "Failed",
                    Reason.BACKOFF_LIMIT_EXCEEDED,
                    f"{cause.message}; runPolicy.backoffLimit={rp.backoffLimit} restarts used",
                    rp.cleanPodPolicy,
                    observed,
                    rp.ttlSecondsAfterFinished,
                )
            )
        if cause.disruption:
            status["disruptedAttempts"] = disrupted = disrupted + 1
            used = f"disruption {disrupted}/{rp.disruptionLimit}" + (
                f", backoff {counted + 1}/{rp.backoffLimit}"
                if rp.countDisruptions
                else ", not counted against backoffLimit"
            )
        else:
            status["failedAttempts"] = failed = failed + 1
            used = f"backoff {counted + 1}/{rp.backoffLimit}"
        status.setdefault("failedAttempts", failed)
        status.setdefault("disruptedAttempts", disrupted)
        delay = restart_delay(attempt, restart_delay_s, restart_delay_cap_s)
        status["restartCount"] = attempt + 1
        status["nextAttemptTime"] = rfc3339(now + timedelta(seconds=delay))
        status = enter_phase(
            status,
            "Restarting",
            cause.reason,
            f"{cause.message}; restart {attempt + 1} ({used}), all pods recreated in {delay:.0f}s",
            gen,
            now,
        )
        status["nodes"] = node_counts(spec.numNodes, [])
        wake = delay if requeue is None else min(requeue, delay)
        return with_writes(
            _plan(job, status, create=create, update=update, delete=_delete(pods, now, nodes), requeue_after=wake)
        )

    # Steady state: drop stale pods, create the missing ones whose names are free, once the
    # restart delay (if any) is over.
    taken = {p["metadata"]["name"] for p in observed.pods}  # foreign pods hold their names too
    not_before = parse_time(status.get("nextAttemptTime"))
    if not_before is not None and now < not_before:
        wait = (not_before - now).total_seconds()
        requeue = wait if requeue is None else min(requeue, wait)
    else:
        status.pop("nextAttemptTime", None)
        for i in range(spec.numNodes):
            if i not in current and naming.pod_name(meta["name"], i) not in taken:
                node = builders.pod(job, spec, i, attempt, image)
                create.append(queue.place(node, gate) if gate is not None else node)
    live = [p for p in current.values() if not _deleting(p)]
    if len(live) == spec.numNodes and all(pod_phase(p) in ("Running", "Succeeded") for p in live):
        if status["phase"] != "Running":
            status = enter_phase(status, "Running", "Running", f"all {spec.numNodes} node pod(s) running", gen, now)
        if observed.progress:
            status["progress"] = progress_status(observed.progress)
    for p in observed.pods:  # come back to look at the node of a pod stuck in deletion
        due = parse_time(p["metadata"].get("deletionTimestamp"))
        if due is not None:
            left = max(1.0, (due - now).total_seconds() + FORCE_DELETE_AFTER_S + 1)
            if left <= 1.0:
                left = NODE_RECHECK_S
            requeue = left if requeue is None else min(requeue, left)
    return with_writes(
        _plan(job, status, create=create, update=update, delete=_delete(stale, now, nodes), requeue_after=requeue)
    )


# ------------------------------------------------------------------------------------------
# queue admission (Kueue): the glue between plan() and controller/queue.py
# ------------------------------------------------------------------------------------------


def _queue_gate(
    job: dict[str, Any],
    spec: Any,
    image: str,
    attempt: int,
    current: dict[int, dict[str, Any]],
    pods: list[dict[str, Any]],
    observed: Observed,
) -> queue.Gate | None:
    """controller/queue.py's verdict for this job (None: it does not use Kueue)."""
    if queue.queue_name(job) is None:
        return None
    live = [p for p in current.values() if not _deleting(p)]
    running = len(live) == spec.numNodes and all(pod_phase(p) in ("Running", "Succeeded") for p in live)
    return queue.admit(
        job,
        template_pod=builders.pod(job, spec, 0, attempt, image),
        num_nodes=spec.numNodes,
        suspend=spec.runPolicy.suspend,
        pods=pods,
        pods_running=running,
        observed=observed.queue,
        now=observed.now,
    )


def _queue_status(job: dict[str, Any], gate: queue.Gate, pending: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "localQueue": queue.queue_name(job),
        "workload": queue.workload_name(job["metadata"]["name"]),
    }
    if gate.admitted_by:
        out["clusterQueue"] = gate.admitted_by
    if pending:
        out["pending"] = pending[:512]
    return out


def _held(
    job: dict[str, Any],
    status: dict[str, Any],
    gate: queue.Gate,
    spec: Any,
    pods: list[dict[str, Any]],
    observed: Observed,
    create: list[dict[str, Any]],
    update: list[dict[str, Any]],
    policy: str,
) -> Plan:
    """Kueue holds the job: no pods (all deleted, none counted as a failure), the phase the gate says."""
    now, gen = observed.now, job["metadata"].get("generation")
    if gate.phase == "Failed":
        p = _finish(
            job,
            status,
            pods,
            "Failed",
            gate.reason,
            gate.message,
            policy,
            observed,
            spec.runPolicy.ttlSecondsAfterFinished,
        )
        return replace(p, workloads=p.workloads + gate.writes)
    if gate.phase == "Queued" and status.get("phase") == "Suspended":
        status = resume(status, gen, now)  # the Suspended condition goes False; Queued follows
    if gate.phase is not None and (status.get("phase"), status.get("reason"), status.get("message")) != (
        gate.phase,
        gate.reason,
        gate.message,
    ):
        status = enter_phase(status, gate.phase, gate.reason, gate.message, gen, now)
    status["nodes"] = node_counts(spec.numNodes, [])
    status["queue"] = _queue_status(job, gate, gate.message if gate.phase == "Queued" else None)
    status.pop("startTime", None)  # the clock (activeDeadlineSeconds) runs only while admitted
    status.pop("nextAttemptTime", None)
    return _plan(
        job,
        status,
        create=create + list(gate.create),
        update=update,
        delete=_delete(pods, now, observed.nodes),
        requeue_after=gate.requeue_after,
        workloads=gate.writes,
    )


def queue_admitted(
    status: dict[str, Any], gate: queue.Gate, num_nodes: int, gen: int | None, now: datetime
) -> dict[str, Any]:
    """Leaving Queued: Kueue admitted the job; its pods are created in this pass."""
    from .status import set_condition

    where = f"ClusterQueue {gate.admitted_by}" if gate.admitted_by else "Kueue"
    message = f"admitted by {where}: creating {num_nodes} node pod(s)"
    conds = set_condition(status.get("conditions") or [], "Queued", "False", Reason.ADMITTED, message, gen, now)
    out = enter_phase({**status, "conditions": conds}, "Created", Reason.ADMITTED, message, gen, now)
    out["queue"] = {k: v for k, v in (status.get("queue") or {}).items() if k != "pending"}
    if gate.admitted_by:
        out["queue"]["clusterQueue"] = gate.admitted_by
    return out
