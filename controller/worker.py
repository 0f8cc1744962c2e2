"""One reconcile pass — read, plan, apply — and the per-job serialisation around it.

Who uses it and why it exists: every kopf handler in :mod:`controller.operator` (a FineTuneJob
event, a pod event mapped to its job, the resync loop) calls :meth:`Worker.reconcile`, so every
trigger runs the *same* idempotent pass. Passes of one job never overlap: a trigger arriving
while a pass runs marks the job dirty and the running pass goes round once more (coalescing a
burst of pod events into one or two passes). No kopf import here; the API is :mod:`controller.kube`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubeclip.api import TERMINAL_PHASES, MetricsSpec

from . import metrics, naming, netpol, queue
from .kube import Conflict, Kube, Refused, Terminating, describe_error
from .progress import progress_url, read_progress
from .reconcile import CreateError, Observed, Plan, plan
from .settings import Settings
from .status import PodPhase, pod_phase

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self, kube: Kube, settings: Settings, *, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    ) -> None:
        self.kube, self.s, self.clock = kube, settings, clock
        self._mu = threading.Lock()
        self._running: dict[tuple[str, str], bool] = {}  # key -> dirty
        #: (namespace, name) -> monotonic time a pass is due (deadline, TTL, retry after error).
        #: Private and guarded by ``_mu``: passes (worker threads) write it while the resync loop
        #: (the event loop) takes due keys out of it; only the methods below touch it.
        self._due: dict[tuple[str, str], float] = {}
        self._errors: dict[tuple[str, str], int] = {}
        #: (namespace, name) -> (job uid, the last create the API server refused); the next pass
        #: shows it on the job. Guarded by ``_mu``.
        self._refused: dict[tuple[str, str], tuple[str, CreateError]] = {}

    def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._mu:
            if key in self._running:
                self._running[key] = True
                return
            self._running[key] = False
        try:
            while True:
                self._pass(namespace, name)
                with self._mu:
                    if not self._running[key]:
                        del self._running[key]
                        return
                    self._running[key] = False
        except BaseException:
            with self._mu:
                self._running.pop(key, None)
            raise

    def forget(self, namespace: str, name: str) -> None:
        with self._mu:
            self._due.pop((namespace, name), None)
            self._errors.pop((namespace, name), None)
            self._refused.pop((namespace, name), None)

    def schedule(self, key: tuple[str, str], delay: float | None) -> None:
        """Run a pass for ``key`` in ``delay`` seconds (None: no pass is due)."""
        with self._mu:
            if delay is None:
                self._due.pop(key, None)
            else:
                self._due[key] = time.monotonic() + delay

    def due_at(self, key: tuple[str, str]) -> float | None:
        """The monotonic time a pass for ``key`` is due, if one is."""
        with self._mu:
            return self._due.get(key)

    def take_due(self, now: float) -> list[tuple[str, str]]:
        """Remove and return the keys whose pass is due at monotonic time ``now``."""
        with self._mu:
            keys = [k for k, t in self._due.items() if t <= now]
            for k in keys:
                del self._due[k]
            return keys

    def _pass(self, namespace: str, name: str) -> Plan | None:
        key = (namespace, name)
        t0 = time.perf_counter()
        try:
            job = self.kube.get_job(namespace, name)
            if job is None:
                self.forget(namespace, name)
                self._release_workloads(namespace, name)
                return None
            p = self.plan_for(job)
            self.apply(job, p)
            with self._mu:
                self._errors.pop(key, None)
            self.schedule(key, None if p.requeue_after is None else p.requeue_after + 0.05)
            return p
        except Conflict as err:
            log.info("conflict, will retry: %s", err, extra={"job": f"{namespace}/{name}"})
            self.schedule(key, 0.5)
        except Refused as err:  # shown on the job by the next pass; retried with backoff
            with self._mu:
                n = self._errors[key] = self._errors.get(key, 0) + 1
            delay = min(60.0, 0.5 * 2**n)
            log.warning("create refused (retry in %.1fs): %s", delay, err, extra={"job": f"{namespace}/{name}"})
            self.schedule(key, delay)
        except Terminating as err:
            log.info(
                "namespace terminating, job left to the garbage collector: %s",
                err,
                extra={"job": f"{namespace}/{name}"},
            )
            self.forget(namespace, name)
        except Exception as err:  # never crash, never hot-loop: retry with backoff
            metrics.RECONCILE_ERRORS.inc()
            with self._mu:
                n = self._errors[key] = self._errors.get(key, 0) + 1
            delay = min(60.0, 0.5 * 2**n)
            text = describe_error(err)
            log.error(
                "reconcile failed (retry in %.1fs): %s",
                delay,
                text or repr(err),
                exc_info=text is None,
                extra={"job": f"{namespace}/{name}"},
            )
            self.schedule(key, delay)
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - t0)
        return None

    def _release_workloads(self, namespace: str, name: str) -> None:
        """A deleted job's Kueue Workloads: Finished and the finalizer off, so the quota is freed
        (Kueue leaves an owned Workload's finalizer to its job's controller)."""
        self._write_workloads(queue.release_orphans(self.kube.leftover_workloads(namespace, name), self.clock()))

    def _write_workloads(self, writes: tuple[queue.WorkloadWrite, ...]) -> None:
        """Writes of one pass come from the same read: a second write to the same Workload
        (Finished, then the finalizer off) carries the version the first one left."""
        versions: dict[str, str | None] = {}
        for w in writes:
            name = w.body["metadata"]["name"]
            if name in versions:
                w = queue.WorkloadWrite(
                    w.what, {**w.body, "metadata": {**w.body["metadata"], "resourceVersion": versions[name]}}
                )
            versions[name] = self.kube.write_workload(w)

    def plan_for(self, job: dict[str, Any]) -> Plan:
        pods, svc, cm, nodes = self.kube.observe(job)
        progress = None
        status = job.get("status") or {}
        if status.get("phase") not in TERMINAL_PHASES:
            node0 = next(
                (
                    p
                    for p in pods
                    if (p["metadata"].get("labels") or {}).get(naming.LABEL_INDEX) == "0"
                    and pod_phase(p) in (PodPhase.RUNNING, PodPhase.SUCCEEDED)
                ),
                None,
            )
            port = ((job.get("spec") or {}).get("metrics") or {}).get("port", MetricsSpec().port)
            url = progress_url(node0, port, self.s) if node0 is not None and port else None
            if url:
                meta = job["metadata"]
                progress = read_progress(url, self.s.progress_timeout_s, job=f"{meta['namespace']}/{meta['name']}")
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        with self._mu:
            uid, refused = self._refused.get(key, (None, None))
        observed = Observed(
            pods=tuple(pods),
            service=svc,
            configmap=cm,
            progress=progress,
            now=self.clock(),
            nodes=nodes,
            create_error=refused if uid == job["metadata"].get("uid") else None,
            queue=self.kube.observe_queue(job) if queue.queue_name(job) else queue.Observed(),
        )
        return plan(
            job,
            observed,
            default_image=self.s.default_image,
            restart_delay_s=self.s.restart_delay_s,
            restart_delay_cap_s=self.s.restart_delay_cap_s,
        )

    def apply(self, job: dict[str, Any], p: Plan) -> None:
        ns = job["metadata"]["namespace"]
        ctx = {"job": f"{ns}/{job['metadata']['name']}"}
        if p.status is not None:
            self.kube.write_status(job, p.status)  # first: a Conflict aborts the whole plan
            if p.transition:
                metrics.record_transition(p.transition, p.status.get("reason"))
                log.info(
                    "phase %s: %s",
                    p.transition,
                    p.status.get("message"),
                    extra={**ctx, "reason": p.status.get("reason")},
                )
        for ev in p.events:
            self.kube.event(job, ev)
        for obj in p.update:  # first: pods are never created against an outdated job.yaml
            self.kube.update(obj)
        key = (ns, job["metadata"]["name"])
        creates = list(p.create)
        if self.s.network_policy and any(o["kind"] == "Service" for o in creates):
            # With the Service, once per job, before its pods: they are never reachable unguarded.
            creates.insert(0, netpol.network_policy(job, self.s))
        for obj in creates:
            try:
                self.kube.create(obj)
            except Refused as err:
                with self._mu:
                    self._refused[key] = (
                        job["metadata"].get("uid"),
                        CreateError(err.kind, err.name, err.status, err.message),
                    )
                raise
        if p.create:
            with self._mu:
                self._refused.pop(key, None)
        self._write_workloads(p.workloads)  # after the creates: a Workload exists before it is written
        for d in p.delete:
            self.kube.delete(ns, d)
        if p.create or p.delete:
            log.info(
                "applied: created %s, deleted %s",
                [o["metadata"]["name"] for o in p.create],
                [d.name for d in p.delete],
                extra=ctx,
            )
        if p.delete_job:
            log.info("ttlSecondsAfterFinished reached: deleting the job", extra=ctx)
            self.kube.delete_job(job)
