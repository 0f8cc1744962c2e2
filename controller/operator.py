"""The operator process: kopf watches -> :class:`controller.worker.Worker` passes, plus the
leader Lease, the resync loop, the metrics and health endpoints.

Who uses it and why it exists: ``kubeclip operator`` and ``python -m controller`` call
:func:`main`. kopf is only the shell — watch streams with resumption and backoff, dispatch,
logging. Every handler does the same thing: run one idempotent pass for the job concerned
(a pod event is mapped to its job through the ``kubeclip.dev/job-name`` label). The handlers
are ``on.event`` handlers on purpose: kopf then keeps no per-object state (no progress
annotations, no finalizers), so a job can always be deleted even with the controller down. The
periodic work (progress polls, deadlines, TTLs, retries after errors, a full resync) is one
loop here instead of a kopf timer per object, because kopf timers need a finalizer on every job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
from aiohttp import web

from kubeclip.api import API_GROUP, API_VERSION, TERMINAL_PHASES, Phase

from . import metrics
from .crd import PLURAL
from .leader import Elector
from .naming import LABEL_JOB
from .settings import Settings
from .worker import Worker

log = logging.getLogger("controller")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    _std = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
        "message",
        "asctime",
        "settings",
        "k8s_skip",
        "k8s_ref",
    }

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._std and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # kopf logs every handler call at INFO ("Handler ... succeeded"): our passes log what they do.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


class Passes:
    """The reconcile passes in flight. kopf's handlers and the resync loop start every pass
    through :meth:`run`; after :meth:`close` none starts, and :meth:`drain` waits for the ones
    running, so that the lease is released only when no pass of this replica can still write."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._cond:
            if self._closed:
                return
            self._running += 1
        try:
            fn(*args)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True

    def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until no pass runs; False if some still do."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running == 0, timeout)


def build_registry(worker: Worker, passes: Passes | None = None) -> kopf.OperatorRegistry:
    run = (passes or Passes()).run

    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # kopf's piggybacking tries the in-cluster service account first, then KUBECONFIG, while
        # controller/kube.py tries KUBECONFIG first: they can differ only where both exist (a pod that
        # also sets KUBECONFIG), which the chart's Deployment never does.
        return kopf.login_via_client(**kwargs)

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, registry=registry)
    def job_event(event: kopf.RawEvent, namespace: str | None, name: str, **_: Any) -> None:
        ns = cast(str, namespace)  # FineTuneJobs are namespaced: kopf always passes the namespace
        if event.get("type") == "DELETED":
            worker.forget(ns, name)  # then one more pass: it finds the job gone and lets its Kueue Workload go
        run(worker.reconcile, ns, name)

    @kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        run(worker.reconcile, cast(str, namespace), labels[LABEL_JOB])  # pods are namespaced: never None

    return registry


class Health:
    """``/healthz``: the event loop answers. ``/readyz``: leader with watches up, or a standby."""

    def __init__(self) -> None:
        self.ready = False

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        return web.Response(text="ready" if self.ready else "not ready", status=200 if self.ready else 503)

    async def start(self, port: int) -> web.AppRunner | None:
        if not port:
            return None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        # All interfaces: the kubelet's probes reach the pod IP, not loopback.
        await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104
        return runner


async def resync_loop(
    worker: Worker, s: Settings, stop: asyncio.Event, pool: ThreadPoolExecutor, passes: Passes
) -> None:
    """Due passes (deadlines, TTLs, retries) every second; progress polls; a periodic full pass."""
    loop = asyncio.get_running_loop()
    namespaces = () if s.clusterwide else s.namespaces
    last_poll = last_full = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
            return
        except asyncio.TimeoutError:
            pass
        now = time.monotonic()
        for key in worker.take_due(now):
            loop.run_in_executor(pool, passes.run, worker.reconcile, *key)
        full = now - last_full >= s.full_resync_s
        if not full and now - last_poll < s.progress_interval_s:
            continue
        last_poll = now
        if full:
            last_full = now
        try:
            jobs = await loop.run_in_executor(pool, worker.kube.list_jobs, namespaces)
        except Exception as err:
            log.warning("resync list failed: %s", err)
            continue
        metrics.set_phases((j.get("status") or {}).get("phase") for j in jobs)
        for j in jobs:
            phase = (j.get("status") or {}).get("phase")
            if (full and phase not in TERMINAL_PHASES) or phase in (Phase.RUNNING, Phase.RESTARTING):
                loop.run_in_executor(
                    pool, passes.run, worker.reconcile, j["metadata"]["namespace"], j["metadata"]["name"]
                )


#: Exit code when a background task (resync loop, lease renewal) or kopf itself died: the
#: Deployment restarts the process instead of leaving a leader that no longer polls progress,
#: deadlines or TTLs.
EXIT_TASK_DIED = 3
#: Exit code when leadership is lost: the process ends at once, passes in flight included.
EXIT_LOST = 1
#: Exit code when passes were still running DRAIN_TIMEOUT_S after a stop: the lease is left to
#: expire (not released) and the process ends at once, so no pass outlives this replica's lease.
EXIT_NOT_DRAINED = 4
#: How long kopf may take to stop once the stop flag is set.
STOP_TIMEOUT_S = 30.0
#: How long a clean stop waits for the passes in flight (each API call has its own timeout),
#: renewing the lease meanwhile; within the chart's 30 s termination grace period.
DRAIN_TIMEOUT_S = 20.0


def exit_now(code: int) -> None:
    """End the process at once: no pass, kopf task or thread of this replica runs on."""
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def exit_lost() -> None:
    """:meth:`Elector.keep`'s ``on_lost``: another replica may lead as soon as the lease expires,
    so nothing of this one may still be writing by then."""
    exit_now(EXIT_LOST)


async def drain_and_release(
    passes: Passes,
    elector: Elector | None,
    renewing: asyncio.Event,
    renewer: asyncio.Task[Any] | None = None,
    timeout: float = DRAIN_TIMEOUT_S,
) -> bool:
    """The end of a clean stop: no new pass starts; the ones in flight finish while the lease is
    still renewed; then renewals stop (``renewer``, the :meth:`Elector.keep` task, is awaited so
    that no renewal races the release) and the lease is released. True when drained; otherwise
    the lease is not released (it expires on its own, after this process has ended)."""
    passes.close()
    drained = await asyncio.get_running_loop().run_in_executor(None, passes.drain, timeout)
    renewing.set()
    if renewer is not None and elector is not None:
        await asyncio.wait({renewer}, timeout=elector.renew_deadline_s + 1.0)
    if not drained:
        log.error("passes still running %.0fs after the stop: leaving the lease to expire", timeout)
        return False
    if elector is not None and not elector.lost:
        await asyncio.get_running_loop().run_in_executor(None, elector.release)
    return True


async def supervise(
    kopf_task: asyncio.Task[Any], background: dict[asyncio.Task[Any], str], stop: asyncio.Event
) -> bool:
    """Wait for kopf to end; True when a background task ended before the stop flag was set (or
    raised), or kopf itself failed. Then the stop flag is set and kopf is given time to stop."""
    died = False
    pending: set[asyncio.Task[Any]] = {kopf_task, *background}
    while kopf_task in pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            err = None if t.cancelled() else t.exception()
            if t is kopf_task:
                if err is not None:
                    log.error("kopf stopped with an error: %r", err, exc_info=err)
                    died = True
            elif err is not None or not stop.is_set():
                log.error(
                    "%s died: %r; exiting so the process is restarted",
                    background[t],
                    err or "returned early",
                    exc_info=err,
                )
                died = True
        if died and not stop.is_set():
            stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(kopf_task), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.error("kopf did not stop in %.0fs", STOP_TIMEOUT_S)
                kopf_task.cancel()
            except Exception:  # kopf's own failure was logged by kopf; we are stopping anyway
                log.debug("kopf stopped with an error", exc_info=True)
            break
    stop.set()
    return died


def kopf_settings(s: Settings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    ks.posting.enabled = False  # our Events are the phase transitions, posted by the worker
    # No watching of CRDs/namespaces (that needs cluster-scoped RBAC the namespaced chart mode
    # lacks): the resources are resolved once at start-up, so the CRD must exist by then.
    ks.scanning.disabled = True
    ks.execution.max_workers = s.workers
    ks.watching.server_timeout = 300
    ks.networking.request_timeout = 60
    return ks


async def run(s: Settings) -> int:
    from .kube import Kube

    try:
        kube = Kube(timeout_s=s.api_timeout_s)
    except Exception as err:
        log.error("no Kubernetes configuration (KUBECONFIG or in-cluster): %s", err)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = Health()
    runner = await health.start(s.health_port)
    if s.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(s.metrics_port, registry=metrics.REGISTRY)
    elector = Elector(kube, s) if s.leader_election else None
    try:
        if elector is not None:
            health.ready = True  # a standby is healthy and ready to take over
            if not await elector.acquire(stop):
                return 0
            metrics.IS_LEADER.set(1)
        pool = ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="resync")
        worker = Worker(kube, s)
        passes = Passes()
        renewing = asyncio.Event()  # set once the passes have drained: renewals stop then
        #: Tasks that must run as long as the operator does; one that ends early ends the process.
        background = {asyncio.create_task(resync_loop(worker, s, stop, pool, passes)): "resync loop"}
        renewer = None
        if elector is not None:
            renewer = asyncio.create_task(elector.keep(renewing, on_lost=exit_lost))
            background[renewer] = "lease renewal"
        ready = asyncio.Event()

        async def mark_ready() -> None:
            await ready.wait()
            health.ready = True
            log.info("watching", extra={"namespaces": list(s.namespaces) or "*"})

        helper = asyncio.create_task(mark_ready())
        health.ready = False
        clusterwide = s.clusterwide
        kopf_task = asyncio.create_task(
            kopf.operator(
                registry=build_registry(worker, passes),
                settings=kopf_settings(s),
                standalone=True,
                clusterwide=clusterwide,
                namespaces=() if clusterwide else list(s.namespaces),
                stop_flag=stop,
                ready_flag=ready,
            )
        )
        died = await supervise(kopf_task, background, stop)
        pool.shutdown(wait=False, cancel_futures=True)  # queued passes are dropped; running ones drain
        drained = await drain_and_release(passes, elector, renewing, renewer)
        metrics.IS_LEADER.set(0)
        for t in [*background, helper]:
            t.cancel()
        await asyncio.gather(*background, helper, return_exceptions=True)
        if not drained:
            exit_now(EXIT_NOT_DRAINED)
        if died:
            return EXIT_TASK_DIED
        if elector is not None and elector.lost:
            return EXIT_LOST
        return 0
    finally:
        metrics.IS_LEADER.set(0)
        if runner is not None:
            await runner.cleanup()


def main(s: Settings) -> int:
    """Run the controller until SIGTERM; the exit code: 0 clean stop, 1 leadership lost, 2 no config,
    3 a background task died, 4 passes still running after the stop's drain timeout."""
    setup_logging(s.log_level)
    log.info("starting", extra={"settings": dict(vars(s))})
    return asyncio.run(run(s))
