"""The controller's Prometheus metrics (names fixed in docs/contracts.md).

Who uses it and why it exists: the reconcile pass records durations, errors and the phase
transitions of each plan; the resync loop sets the jobs-by-phase gauge; the operator serves
:data:`REGISTRY` on ``--metrics-port``. A registry of our own keeps the output to what we own.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kubeclip.api import FINAL_EXIT_CODES, Phase, Reason

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_CREATED = Counter(
    "kubeclip_controller_jobs_created_total", "FineTuneJobs that got their pods created.", registry=REGISTRY
)
JOBS_SUCCEEDED = Counter("kubeclip_controller_jobs_succeeded_total", "FineTuneJobs that succeeded.", registry=REGISTRY)
JOBS_FAILED = Counter(
    "kubeclip_controller_jobs_failed_total", "FineTuneJobs that failed.", ["reason"], registry=REGISTRY
)
# The reasons a job ends Failed, exported at 0 from the start: a labelled counter has no series until
# its first increment, and a series that first appears at 1 is invisible to increase(), so without
# this the first failure of each reason after a controller start would never fire KubeclipJobFailed
# (seen on the local node with a real Prometheus). Reasons passed through from pods are not known in
# advance; the alert also catches a failed-total series that is new within its window.
FAILED_REASONS = (
    Reason.INVALID_SPEC,
    Reason.DEADLINE_EXCEEDED,
    Reason.DISRUPTION_LIMIT_EXCEEDED,
    Reason.BACKOFF_LIMIT_EXCEEDED,
    *FINAL_EXIT_CODES.values(),
)
for _reason in FAILED_REASONS:
    JOBS_FAILED.labels(reason=_reason)
JOBS_RESTARTED = Counter(
    "kubeclip_controller_jobs_restarted_total", "Whole-job restarts after retryable failures.", registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "kubeclip_controller_reconcile_duration_seconds",
    "Duration of one reconcile pass (read, plan, apply).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "kubeclip_controller_reconcile_errors_total", "Reconcile passes that raised.", registry=REGISTRY
)
JOBS = Gauge("kubeclip_controller_jobs", "FineTuneJobs by phase.", ["phase"], registry=REGISTRY)
IS_LEADER = Gauge("kubeclip_controller_leader", "1 while this replica holds the leader Lease.", registry=REGISTRY)

#: "Pending": a job the controller has not written a phase for yet.
NO_PHASE = "Pending"
PHASES = (NO_PHASE, *(str(p) for p in Phase))


def record_transition(phase: str | None, reason: str | None) -> None:
    if phase == Phase.CREATED and reason == Reason.CREATED:
        JOBS_CREATED.inc()
    elif phase == Phase.SUCCEEDED:
        JOBS_SUCCEEDED.inc()
    elif phase == Phase.FAILED:
        JOBS_FAILED.labels(reason=reason or "Unknown").inc()
    elif phase == Phase.RESTARTING:
        JOBS_RESTARTED.inc()


def set_phases(phases: Iterable[str | None]) -> None:
    tally = _Tally(p or NO_PHASE for p in phases)
    for phase in PHASES:
        JOBS.labels(phase=phase).set(tally.get(phase, 0))
