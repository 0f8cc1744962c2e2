"""The pure reconcile: ``plan(job, observed) -> Plan`` — what to create, delete and write.

Who uses it and why it exists: :mod:`controller.operator` runs one pass per watch event or
resync (read the job, list its children, ``plan``, apply); :mod:`controller.kube` applies the
plan. Nothing here talks to the API or reads the clock, so the whole failure policy is tested
with plain dicts (``tests/unit/test_reconcile*.py``). The pass is level-triggered: it rebuilds
the status from what exists and never asks "what just happened".

The policy is a sequence of steps (:data:`STEPS`, JobSet's shape: one function per policy) over
one :class:`Pass` object: ``finished`` (cleanup, TTL), ``invalid_spec``, ``queue_admission``
(Kueue, :mod:`controller.queue`), ``suspend``,
``deadline``, ``success``, ``failure_policy``, ``start_deadline`` (waiting pods, refused creates,
``runPolicy.startDeadlineSeconds``), ``start_pods``. Each step either ends the pass with a
:class:`Plan` or returns None and leaves the decision to the next; a new run-policy field is one
more step where it must decide (``plan(..., steps=...)`` takes another sequence). Reading pods
and Nodes (classify, judge, node gone, waiting reasons) lives in :mod:`controller.pods`.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

from kubeclip.api import (
    PODS_WAITING,
    TERMINAL_PHASES,
    CleanPodPolicy,
    ConfigError,
    FineTuneJobSpec,
    Phase,
    Reason,
    RunPolicy,
    parse_job_spec,
)

from . import builders, naming, queue
from .pods import (
    FORCE_DELETE_AFTER_S,
    INVALID_IMAGE_NAME,
    OUT_OF_SERVICE_TAINT,
    RETRYABLE_POD_REASONS,
    Delete,
    Failure,
    Waiting,
    classify,
    cleanup,
    delete,
    deleting,
    int_label,
    judge,
    node_gone,
    node_unhealthy,
    owned_by,
    terminal,
    trainer_terminated,
    waiting,
)
from .status import (
    PodPhase,
    completed_message,
    enter_phase,
    final_progress,
    node_counts,
    pod_phase,
    progress_status,
    resume,
    set_condition,
)
from .times import parse_time, rfc3339

__all__ = [
    "FORCE_DELETE_AFTER_S",
    "NODE_RECHECK_S",
    "OUT_OF_SERVICE_TAINT",
    "RESTART_DELAY_CAP_S",
    "RESTART_DELAY_S",
    "RETRYABLE_POD_REASONS",
    "SETTLE_S",
    "STEPS",
    "CreateError",
    "Delete",
    "Event",
    "Failure",
    "Observed",
    "Pass",
    "Plan",
    "Step",
    "classify",
    "cleanup",
    "judge",
    "node_gone",
    "plan",
    "queue_admission",
    "restart_delay",
]


@dataclass(frozen=True)
class CreateError:
    """The API server refused to create one of the job's children (a ResourceQuota or Pod Security
    403, an admission webhook, a 422 for an object it finds invalid); the worker remembers the
    last one per job and passes it to the next pass."""

    kind: str
    name: str
    status: int  # the HTTP status
    message: str


@dataclass(frozen=True)
class Observed:
    """What exists now: the job's pods (any attempt), its Service and ConfigMap, node 0's progress,
    the Nodes of the job's pods whenever one of them is failed or being deleted (name -> Node, or
    None when the Node does not exist; a name not in the map was not looked at), and the last
    create the API server refused."""

    pods: tuple[dict[str, Any], ...] = ()
    service: dict[str, Any] | None = None
    configmap: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    now: datetime = field(default_factory=lambda: datetime(1970, 1, 1, tzinfo=timezone.utc))
    nodes: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    create_error: CreateError | None = None
    queue: queue.Observed = field(default_factory=queue.Observed)  # Kueue: the job's Workload (controller/queue.py)


#: While a pod is stuck in deletion the job is looked at again this often (Node changes trigger
#: no pass of their own).
NODE_RECHECK_S = 30.0
#: Delay before the next attempt: RESTART_DELAY_S doubling per restart up to RESTART_DELAY_CAP_S
#: (the Job controller's 10 s -> 6 min). The controller's settings may change both.
RESTART_DELAY_S = 10.0
RESTART_DELAY_CAP_S = 360.0
#: An attempt with a failed pod is judged once all its pods are terminal, or this long after its
#: first failure (finishedAt), whichever is first: long enough for a peer's eviction or its node's
#: NotReady (the node controller's grace period is 40-50 s) to reach the API before a knock-on
#: exit 1 is counted as the cause; short next to the restart delay it adds to at most.
SETTLE_S = 60.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """Apply in this order: status (optimistic concurrency), events, updates, creates, deletes (the
    ConfigMap is up to date before any pod that reads it is created)."""

    status: dict[str, Any] | None = None  # the new status, only when it differs
    events: tuple[Event, ...] = ()
    create: tuple[dict[str, Any], ...] = ()
    update: tuple[dict[str, Any], ...] = ()
    delete: tuple[Delete, ...] = ()
    delete_job: bool = False
    requeue_after: float | None = None  # seconds until a deadline/TTL is due
    transition: str | None = None  # the phase entered by this pass (metrics)
    workloads: tuple[queue.WorkloadWrite, ...] = ()  # Kueue Workload writes, after the creates

    @property
    def empty(self) -> bool:
        return not (
            self.status or self.events or self.create or self.update or self.delete or self.delete_job or self.workloads
        )


def restart_delay(restarts: int, base: float = RESTART_DELAY_S, cap: float = RESTART_DELAY_CAP_S) -> float:
    """Seconds before attempt ``restarts + 1``: base, 2*base, 4*base ... up to cap (Job-like)."""
    return min(cap, base * float(2 ** min(restarts, 30)))


def _set_final_progress(status: dict[str, Any], pod: dict[str, Any] | None) -> bool:
    """status.progress from the final progress in node 0's termination message, if it left one
    (docs/contracts.md, "Progress"); checkpoints reported skipped while it ran stay listed."""
    final = final_progress(trainer_terminated(pod)) if pod is not None else None
    if final is None:
        return False
    new = progress_status(final)
    skipped = (status.get("progress") or {}).get("skippedCheckpoints")
    if skipped and "skippedCheckpoints" not in new:
        new["skippedCheckpoints"] = skipped
    status["progress"] = new
    return True


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
        kind = "Warning" if transition in (Phase.RESTARTING, Phase.FAILED) else "Normal"
        events.append(Event(kind, new_status.get("reason") or transition, new_status.get("message") or transition))
    status = new_status if new_status != old else None
    rest: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return Plan(status=status, events=tuple(events), transition=transition, **rest)


# ------------------------------------------------------------------------------------------
# the pass object
# ------------------------------------------------------------------------------------------


@dataclass
class Pass:
    """One reconcile pass in the making: the job, what was observed, and what the steps decided so
    far (the next status, objects to create or update, when to come back). Each step of
    :data:`STEPS` reads and extends it, then either ends the pass with a :class:`Plan` or returns
    None to hand over to the next step."""

    job: dict[str, Any]
    observed: Observed
    default_image: str = ""
    restart_delay_s: float = RESTART_DELAY_S
    restart_delay_cap_s: float = RESTART_DELAY_CAP_S
    #: The next status (a deep copy of the stored one, edited by the steps).
    status: dict[str, Any] = field(default_factory=dict)
    #: The pods this job controls, any attempt.
    pods: list[dict[str, Any]] = field(default_factory=list)
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Seconds until the earliest deadline a step knows of (None: no pass is due).
    requeue: float | None = None
    #: Set by :func:`invalid_spec` once the spec validated; the steps after it read :attr:`spec`.
    parsed: FineTuneJobSpec | None = None
    image: str = ""
    #: The current attempt's pods by node index, and every other pod this job controls.
    current: dict[int, dict[str, Any]] = field(default_factory=dict)
    stale: list[dict[str, Any]] = field(default_factory=list)
    #: Set by :func:`queue_admission` for a job that uses Kueue and is admitted (pods get its
    #: flavors' node labels and tolerations); its Workload writes go out with whatever plan ends the pass.
    gate: queue.Gate | None = None
    workloads: list[queue.WorkloadWrite] = field(default_factory=list)

    def __post_init__(self) -> None:
        meta = self.job["metadata"]
        self.status = copy.deepcopy(self.job.get("status") or {})
        self.status.setdefault("restartCount", 0)
        if meta.get("generation") is not None:
            self.status["observedGeneration"] = meta["generation"]
        self.pods = [p for p in self.observed.pods if owned_by(p, meta.get("uid"))]

    # ---- what the steps read --------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    @property
    def generation(self) -> int | None:
        gen = self.job["metadata"].get("generation")
        return int(gen) if gen is not None else None

    @property
    def now(self) -> datetime:
        return self.observed.now

    @property
    def raw_run_policy(self) -> dict[str, Any]:
        """spec.runPolicy as stored (the steps before :func:`invalid_spec` cannot trust its types)."""
        rp = (self.job.get("spec") or {}).get("runPolicy")
        return rp if isinstance(rp, dict) else {}

    @property
    def spec(self) -> FineTuneJobSpec:
        if self.parsed is None:
            raise RuntimeError("Pass.spec is read before the invalid_spec step validated it")
        return self.parsed

    @property
    def attempt(self) -> int:
        return int(self.status["restartCount"])

    @property
    def live(self) -> list[dict[str, Any]]:
        """The current attempt's pods that are not being deleted."""
        return [p for p in self.current.values() if not deleting(p)]

    @property
    def node0(self) -> dict[str, Any] | None:
        return self.current.get(0)

    # ---- what the steps do ----------------------------------------------------------------

    def wake(self, seconds: float) -> None:
        """Come back in ``seconds`` at the latest."""
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def enter(self, phase: Phase, reason: str, message: str) -> None:
        self.status = enter_phase(self.status, phase, reason, message, self.generation, self.now)

    def delete(self, pods: list[dict[str, Any]]) -> tuple[Delete, ...]:
        return delete(pods, self.now, self.observed.nodes)

    def recheck_stuck(self) -> None:
        """Come back to look at the node of a pod stuck in deletion (Node changes trigger no pass)."""
        for pod in self.observed.pods:
            due = parse_time(pod["metadata"].get("deletionTimestamp"))
            if due is not None:
                left = max(1.0, (due - self.now).total_seconds() + FORCE_DELETE_AFTER_S + 1)
                self.wake(NODE_RECHECK_S if left <= 1.0 else left)

    @property
    def all_running(self) -> bool:
        """Every node pod of the current attempt runs (or has finished successfully)."""
        live = self.live
        return len(live) == self.spec.numNodes and all(
            pod_phase(pod) in (PodPhase.RUNNING, PodPhase.SUCCEEDED) for pod in live
        )

    def plan(self, delete: tuple[Delete, ...] = (), **kw: Any) -> Plan:
        """End the pass: the status so far, the creates, updates and events collected, ``delete``."""
        return _plan(
            self.job,
            self.status,
            events=self.events,
            create=self.create,
            update=self.update,
            delete=delete,
            requeue_after=self.requeue,
            workloads=self.workloads,
            **kw,
        )

    def finish(self, phase: Phase, reason: str, message: str, *, cleanup_policy: str | None = None) -> Plan:
        """End the job: Succeeded or Failed, pods cleaned up per cleanPodPolicy, the TTL armed."""
        if self.parsed is None:  # an invalid spec: its raw fields, as far as they make sense
            policy, ttl = cleanup_policy or DEFAULT_CLEAN_POLICY, _raw_ttl(self)
        else:
            policy, ttl = self.spec.runPolicy.cleanPodPolicy, self.spec.runPolicy.ttlSecondsAfterFinished
        self.enter(phase, reason, message)
        self.status["completionTime"] = rfc3339(self.now)
        self.status.pop("nextAttemptTime", None)
        return _plan(
            self.job,
            self.status,
            events=self.events,
            delete=cleanup(self.pods, policy, self.now, self.observed.nodes),
            requeue_after=ttl if ttl else None,
            delete_job=ttl == 0,
            workloads=self.workloads,
        )


#: A policy step: ends the pass with a Plan, or returns None to let the next step decide.
Step = Callable[[Pass], Plan | None]


def _raw_ttl(p: Pass) -> int | None:
    """runPolicy.ttlSecondsAfterFinished as stored; None unless a non-negative integer (an object
    that bypassed the CRD must not break the requeue arithmetic)."""
    ttl = p.raw_run_policy.get("ttlSecondsAfterFinished")
    return ttl if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0 else None


#: runPolicy.cleanPodPolicy's default, for a job whose spec does not parse.
DEFAULT_CLEAN_POLICY: str = RunPolicy.model_fields["cleanPodPolicy"].default


def _raw_clean_policy(p: Pass) -> str:
    policy = p.raw_run_policy.get("cleanPodPolicy") or DEFAULT_CLEAN_POLICY
    return policy if policy in get_args(CleanPodPolicy) else DEFAULT_CLEAN_POLICY


# ------------------------------------------------------------------------------------------
# the steps, in order
# ------------------------------------------------------------------------------------------


def finished(p: Pass) -> Plan | None:
    """Finished jobs stay finished: only cleanup and the TTL are left."""
    if p.status.get("phase") not in TERMINAL_PHASES:
        return None
    ttl = _raw_ttl(p)
    done = parse_time(p.status.get("completionTime"))
    due = None if ttl is None or done is None else (done - p.now).total_seconds() + ttl
    return _plan(
        p.job,
        p.status,
        delete=cleanup(p.pods, _raw_clean_policy(p), p.now, p.observed.nodes),
        delete_job=due is not None and due <= 0,
        requeue_after=due if due is not None and due > 0 else None,
        workloads=queue.release(p.job, p.observed.queue, p.now),  # Kueue: Finished, the quota given back
    )


def invalid_spec(p: Pass) -> Plan | None:
    """A spec the API model refuses (or no image at all) fails the job once; a valid one is admitted:
    the ConfigMap and Service that should exist, and the pods grouped by attempt."""
    try:
        spec = parse_job_spec(p.job.get("spec") or {})
        image = spec.image or p.default_image
        if not image:
            raise ConfigError("spec.image: empty, and the controller has no default image (--default-image)")
    except ConfigError as err:
        return p.finish(Phase.FAILED, Reason.INVALID_SPEC, str(err), cleanup_policy=_raw_clean_policy(p))
    p.parsed, p.image = spec, image
    cm = builders.configmap(p.job)
    if p.observed.configmap is None:
        p.create.append(cm)
    elif (p.observed.configmap.get("data") or {}) != cm["data"]:
        p.update.append({**p.observed.configmap, "data": cm["data"]})
    if p.observed.service is None:
        p.create.append(builders.service(p.job, spec))
    for pod in p.pods:
        index = int_label(pod, naming.LABEL_INDEX)
        if int_label(pod, naming.LABEL_ATTEMPT) == p.attempt and index is not None and 0 <= index < spec.numNodes:
            p.current[index] = pod
    p.stale = [pod for pod in p.pods if pod not in p.current.values()]
    p.status["nodes"] = node_counts(spec.numNodes, p.live)
    return None


def _succeeded(pod: dict[str, Any] | None) -> bool:
    return pod is not None and pod_phase(pod) == PodPhase.SUCCEEDED and not deleting(pod)


def queue_admission(p: Pass) -> Plan | None:
    """Kueue (controller/queue.py), for a job labelled kueue.x-k8s.io/queue-name: no pods until its
    Workload is admitted. Waiting or evicted, the job is Queued with no pods (all deleted, none
    counted as a failure) and the pass ends here; admitted, it goes on with the flavors' node
    labels and tolerations for its pods, Created if it was Queued."""
    gate = queue.admit(
        p.job,
        template_pod=builders.pod(p.job, p.spec, 0, p.attempt, p.image),
        num_nodes=p.spec.numNodes,
        suspend=p.spec.runPolicy.suspend,
        pods=p.pods,
        pods_running=p.all_running,
        observed=p.observed.queue,
        now=p.now,
    )
    if gate is None:
        return None
    p.workloads += gate.writes
    p.create += gate.create
    if gate.hold and gate.phase == Phase.FAILED:
        return p.finish(Phase.FAILED, gate.reason, gate.message)
    if gate.hold and gate.phase == Phase.SUSPENDED:
        return None  # the suspend step deletes the pods; the Workload is inactive
    if gate.hold:
        if gate.phase == Phase.QUEUED and p.status.get("phase") == Phase.SUSPENDED:
            p.status = resume(p.status, p.generation, p.now)  # the Suspended condition goes False
        if gate.phase is not None and (p.status.get("phase"), p.status.get("reason"), p.status.get("message")) != (
            gate.phase,
            gate.reason,
            gate.message,
        ):
            p.enter(Phase(gate.phase), gate.reason, gate.message)
        p.status["nodes"] = node_counts(p.spec.numNodes, [])
        p.status["queue"] = _queue_status(p.job, gate, gate.message if gate.phase == Phase.QUEUED else None)
        for key in ("startTime", "attemptStartTime", "nextAttemptTime"):  # the clocks run only while admitted
            p.status.pop(key, None)
        if gate.requeue_after is not None:
            p.wake(gate.requeue_after)
        p.recheck_stuck()
        return p.plan(delete=p.delete(p.pods))
    p.gate = gate
    if p.status.get("phase") == Phase.QUEUED:
        where = f"ClusterQueue {gate.admitted_by}" if gate.admitted_by else "Kueue"
        message = f"admitted by {where}: creating {p.spec.numNodes} node pod(s)"
        p.status["conditions"] = set_condition(
            p.status.get("conditions") or [], Phase.QUEUED, "False", Reason.ADMITTED, message, p.generation, p.now
        )
        p.enter(Phase.CREATED, Reason.ADMITTED, message)
    p.status["queue"] = _queue_status(p.job, gate, None)
    return None


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


def suspend(p: Pass) -> Plan | None:
    """runPolicy.suspend: no pods, the clock stops (startTime is set again on resume). A suspend
    seen after node 0 has succeeded leaves the success to the success step. Leaving suspension
    waits until the suspended pods are gone (their deletion is no disruption), then makes the job
    Created again; a job's first pass makes it Created."""
    if p.spec.runPolicy.suspend and not _succeeded(p.node0):
        if p.status.get("phase") != Phase.SUSPENDED:
            p.enter(Phase.SUSPENDED, Reason.SUSPENDED, "runPolicy.suspend is true: pods deleted")
        p.status.pop("startTime", None)
        p.status.pop("attemptStartTime", None)
        p.status["nodes"] = node_counts(p.spec.numNodes, [])
        p.status.pop("nextAttemptTime", None)
        p.recheck_stuck()
        return p.plan(delete=p.delete(p.pods))
    if p.status.get("phase") == Phase.SUSPENDED:
        if p.pods:
            p.status["message"] = (
                f"runPolicy.suspend is false: waiting for {len(p.pods)} pod(s) of the suspended run to terminate"
            )
            p.recheck_stuck()
            return p.plan(delete=p.delete(p.pods))
        p.status = resume(p.status, p.generation, p.now)
    if p.status.get("phase") is None:
        p.enter(Phase.CREATED, Reason.CREATED, f"creating {p.spec.numNodes} node pod(s)")
    p.status.setdefault("startTime", rfc3339(p.now))
    return None


def deadline(p: Pass) -> Plan | None:
    """runPolicy.activeDeadlineSeconds, counted from startTime."""
    limit = p.spec.runPolicy.activeDeadlineSeconds
    if limit is None:
        return None
    started = parse_time(p.status.get("startTime")) or p.now
    left = (started - p.now).total_seconds() + limit
    if left <= 0:
        return p.finish(
            Phase.FAILED,
            Reason.DEADLINE_EXCEEDED,
            f"the job ran longer than runPolicy.activeDeadlineSeconds={limit}",
        )
    p.wake(left)
    return None


def success(p: Pass) -> Plan | None:
    """Node 0 exiting 0 is the job's success (the other nodes are cleaned up)."""
    node0 = p.node0
    if node0 is None or pod_phase(node0) != PodPhase.SUCCEEDED or deleting(node0):
        return None
    # The trainer's own final figures; /progress only if it left none (it stops serving on exit).
    if not _set_final_progress(p.status, node0) and p.observed.progress:
        p.status["progress"] = progress_status(p.observed.progress)
    return p.finish(
        Phase.SUCCEEDED, Reason.SUCCEEDED, completed_message(node0["metadata"]["name"], trainer_terminated(node0))
    )


def failure_policy(p: Pass) -> Plan | None:
    """The attempt judged from all its failed pods together (:func:`judge`): a final verdict fails
    the job; a failure or disruption restarts it while backoffLimit / disruptionLimit allow."""
    rp = p.spec.runPolicy
    failures = [f for f in (classify(pod) for _, pod in sorted(p.current.items(), key=lambda kv: kv[0])) if f]
    if p.status["phase"] == Phase.RUNNING:
        missing = [i for i in range(p.spec.numNodes) if i not in p.current]
        failures += [
            Failure(True, Reason.POD_DELETED, f"{naming.pod_name(p.name, i)} disappeared", True) for i in missing
        ]
    if failures:
        failures += _lost_peers(p)
    cause = judge(failures)
    if cause is None:
        return None
    if not cause.disruption:
        left = _settle_left(p, failures)
        if left > 0:  # a peer may still turn out evicted or lost: judge when it is known
            p.wake(left)
            return p.plan(delete=p.delete(p.stale))
    if not cause.retryable:
        _set_final_progress(p.status, p.node0)  # rank 0's progress at its verdict, when node 0 has exited
        return p.finish(Phase.FAILED, cause.reason, cause.message)
    attempt = p.attempt
    disrupted = int(p.status.get("disruptedAttempts", 0))
    failed = int(p.status.get("failedAttempts", max(0, attempt - disrupted)))  # jobs from before these fields
    counted = failed + (disrupted if rp.countDisruptions else 0)
    if cause.disruption and disrupted >= rp.disruptionLimit:
        return p.finish(
            Phase.FAILED,
            Reason.DISRUPTION_LIMIT_EXCEEDED,
            f"{cause.message}; runPolicy.disruptionLimit={rp.disruptionLimit} restarts used",
        )
    if (not cause.disruption or rp.countDisruptions) and counted >= rp.backoffLimit:
        return p.finish(
            Phase.FAILED,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{cause.message}; runPolicy.backoffLimit={rp.backoffLimit} restarts used",
        )
    if cause.disruption:
        p.status["disruptedAttempts"] = disrupted = disrupted + 1
        used = f"disruption {disrupted}/{rp.disruptionLimit}" + (
            f", backoff {counted + 1}/{rp.backoffLimit}"
            if rp.countDisruptions
            else ", not counted against backoffLimit"
        )
    else:
        p.status["failedAttempts"] = failed = failed + 1
        used = f"backoff {counted + 1}/{rp.backoffLimit}"
    p.status.setdefault("failedAttempts", failed)
    p.status.setdefault("disruptedAttempts", disrupted)
    delay = restart_delay(attempt, p.restart_delay_s, p.restart_delay_cap_s)
    p.status["restartCount"] = attempt + 1
    p.status.pop("attemptStartTime", None)
    p.status["nextAttemptTime"] = rfc3339(p.now + timedelta(seconds=delay))
    p.enter(
        Phase.RESTARTING,
        cause.reason,
        f"{cause.message}; restart {attempt + 1} ({used}), all pods recreated in {delay:.0f}s",
    )
    p.status["nodes"] = node_counts(p.spec.numNodes, [])
    p.wake(delay)
    return p.plan(delete=p.delete(p.pods))


def _lost_peers(p: Pass) -> list[Failure]:
    """Running pods of the attempt whose Node is gone or not Ready: a disruption, found when a
    peer's failure is judged (the pod's own status may lag by minutes)."""
    out = []
    for _, pod in sorted(p.current.items(), key=lambda kv: kv[0]):
        node_name = (pod.get("spec") or {}).get("nodeName")
        if pod_phase(pod) != PodPhase.RUNNING or classify(pod) is not None or node_name not in p.observed.nodes:
            continue
        why = node_unhealthy(p.observed.nodes[node_name])
        if why:
            out.append(Failure(True, Reason.NODE_LOST, f"{pod['metadata']['name']}: {why}", True))
    return out


def _settle_left(p: Pass, failures: list[Failure]) -> float:
    """Seconds until a failed attempt may be judged: 0 once every pod is terminal, or when no
    failure carries a finishedAt (the trainer never ran: nothing to wait for)."""
    if all(terminal(pod) for pod in p.current.values()):
        return 0.0
    times = [t for t in (parse_time(f.at) for f in failures) if t is not None]
    if not times:
        return 0.0
    return (min(times) - p.now).total_seconds() + SETTLE_S


def _pods_waiting(p: Pass, cause: Waiting | None) -> None:
    """The PodsWaiting condition: True with the cause (and a Warning event when the cause is new),
    False once nothing holds the pods back."""
    conds = p.status.get("conditions") or []
    old = next((c for c in conds if c.get("type") == PODS_WAITING), None)
    if cause is None:
        if old is not None and old.get("status") == "True":
            p.status["conditions"] = set_condition(
                conds, PODS_WAITING, "False", Reason.PODS_STARTED, "no node pod is held back", p.generation, p.now
            )
        return
    if old is None or old.get("status") != "True" or old.get("reason") != cause.reason:
        p.events.append(Event("Warning", cause.reason, cause.message))
    p.status["conditions"] = set_condition(
        conds, PODS_WAITING, "True", cause.reason, cause.message, p.generation, p.now
    )


def start_deadline(p: Pass) -> Plan | None:
    """Pods that wait (image pull, container config, no node fits) or that the API server refused:
    the cause on the job (condition PodsWaiting, a Warning event), never a failure counted against
    backoffLimit; runPolicy.startDeadlineSeconds after the attempt's pods were created the job fails
    with that cause. An image name the runtime rejects, or a pod the API server finds invalid (422),
    cannot get better: InvalidSpec at once."""
    if p.status["phase"] == Phase.RUNNING or p.all_running:
        _pods_waiting(p, None)
        return None
    missing = {naming.pod_name(p.name, i) for i in range(p.spec.numNodes) if i not in p.current}
    err = p.observed.create_error
    if err is not None and err.name not in missing | {o["metadata"]["name"] for o in p.create}:
        err = None  # it exists by now
    if err is not None and err.status == 422:
        return p.finish(
            Phase.FAILED, Reason.INVALID_SPEC, f"the API server refused {err.kind} {err.name}: {err.message}"
        )
    held = [w for w in (waiting(pod) for _, pod in sorted(p.current.items(), key=lambda kv: kv[0])) if w]
    bad = next((w for w in held if w.reason == INVALID_IMAGE_NAME), None)
    if bad is not None:
        _pods_waiting(p, bad)
        return p.finish(Phase.FAILED, Reason.INVALID_SPEC, bad.message)
    cause = held[0] if held else None
    if cause is None and err is not None:
        cause = Waiting(Reason.POD_CREATE_FAILED, f"creating {err.kind} {err.name}: {err.message}")
    _pods_waiting(p, cause)
    limit = p.spec.runPolicy.startDeadlineSeconds
    started = parse_time(p.status.get("attemptStartTime"))
    if limit is None or started is None:
        return None
    left = (started - p.now).total_seconds() + limit
    if left > 0:
        p.wake(left)
        return None
    running = sum(1 for pod in p.live if pod_phase(pod) in (PodPhase.RUNNING, PodPhase.SUCCEEDED))
    text = cause.message if cause else f"{p.spec.numNodes - running} of {p.spec.numNodes} node pod(s) not running"
    return p.finish(
        Phase.FAILED,
        cause.reason if cause else Reason.START_DEADLINE_EXCEEDED,
        f"{text}; not all node pods running within runPolicy.startDeadlineSeconds={limit}",
    )


def start_pods(p: Pass) -> Plan:
    """Steady state: drop stale pods, create the missing ones whose names are free once the
    restart delay (if any) is over; Running when all pods run."""
    taken = {pod["metadata"]["name"] for pod in p.observed.pods}  # foreign pods hold their names too
    not_before = parse_time(p.status.get("nextAttemptTime"))
    if not_before is not None and p.now < not_before:
        p.wake((not_before - p.now).total_seconds())
    else:
        p.status.pop("nextAttemptTime", None)
        for i in range(p.spec.numNodes):
            if i not in p.current and naming.pod_name(p.name, i) not in taken:
                node = builders.pod(p.job, p.spec, i, p.attempt, p.image)
                p.create.append(queue.place(node, p.gate) if p.gate is not None else node)
    if "attemptStartTime" not in p.status and (p.current or any(o["kind"] == "Pod" for o in p.create)):
        p.status["attemptStartTime"] = rfc3339(p.now)  # runPolicy.startDeadlineSeconds counts from here
    if p.all_running:
        if p.status["phase"] != Phase.RUNNING:
            p.enter(Phase.RUNNING, Reason.RUNNING, f"all {p.spec.numNodes} node pod(s) running")
        if p.observed.progress:
            p.status["progress"] = progress_status(p.observed.progress)
    p.recheck_stuck()
    return p.plan(delete=p.delete(p.stale))


#: The policies, in the order they decide (JobSet's shape: one function per policy). The first
#: step that returns a Plan ends the pass; the last one always does. A new run-policy field lands
#: as a step of its own, inserted where it must decide.
STEPS: Sequence[Step] = (
    finished,
    invalid_spec,
    queue_admission,
    suspend,
    deadline,
    success,
    failure_policy,
    start_deadline,
    start_pods,
)


def plan(
    job: dict[str, Any],
    observed: Observed,
    *,
    default_image: str = "",
    restart_delay_s: float = RESTART_DELAY_S,
    restart_delay_cap_s: float = RESTART_DELAY_CAP_S,
    steps: Sequence[Step] = STEPS,
) -> Plan:
    """One reconcile pass for ``job`` (a FineTuneJob as the API returns it)."""
    p = Pass(
        job,
        observed,
        default_image=default_image,
        restart_delay_s=restart_delay_s,
        restart_delay_cap_s=restart_delay_cap_s,
    )
    for step in steps:
        decided = step(p)
        if decided is not None:
            return decided
    raise RuntimeError("the last reconcile step must always return a Plan")
