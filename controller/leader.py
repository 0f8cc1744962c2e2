"""Leader election through a ``coordination.k8s.io/v1`` Lease, so several replicas are safe.

Who uses it and why it exists: :func:`controller.operator.main` waits in :meth:`Elector.acquire`
before it starts kopf, and runs :meth:`Elector.keep` beside it until the shutdown has drained
every pass. Losing the lease ends the process at once (the operator's ``on_lost`` exits without
waiting for kopf or the passes in flight), so Kubernetes restarts it as a fresh candidate (what
client-go's leaderelection and controller-runtime do too). kopf's own peering (its KopfPeering
CRDs) is not used: kopf runs ``standalone``. :func:`decide` is the pure rule, tested without an
API server.

Two leaders must never overlap. A standby takes over once the record has not changed for
``lease_duration_s`` of *its* time since it saw it, which is no earlier than the start of our last
successful renewal. So the leader keeps one deadline, ``renew_deadline_s`` after the start of its
last successful renewal, across all its attempts: each attempt gets only the time left, and the
leader gives up when it runs out, before any standby could take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from .settings import Settings
from .times import rfc3339

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """The Lease record as this replica last saw it, and *its own* monotonic time when it first saw
    it. Lease times written by another replica come from another clock; client-go's rule is to
    never compare them with ours, only to notice when the record changes."""

    record: tuple[Any, ...]
    seen_at: float


def _record(spec: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        spec.get(k) for k in ("holderIdentity", "renewTime", "acquireTime", "leaseTransitions", "leaseDurationSeconds")
    )


def decide(
    spec: dict[str, Any] | None,
    me: str,
    now: datetime,
    duration_s: float,
    *,
    observed: Observation | None = None,
    local_now: float = 0.0,
) -> tuple[dict[str, Any] | None, Observation]:
    """The Lease spec to write to become/stay leader (None while another holder's lease is valid),
    and the observation to keep for the next call.

    Another holder's lease is valid until *our* monotonic clock passes the time we first saw its
    current record plus its leaseDurationSeconds (client-go's leaderelection): a holder that
    keeps renewing keeps changing the record; one whose record stops changing has expired after
    leaseDuration of our time, whatever its renewTime says (clocks of two nodes may disagree).
    ``now`` (wall clock) only fills the times we write.
    """
    spec = dict(spec or {})
    record = _record(spec)
    if observed is None or observed.record != record:
        observed = Observation(record, local_now)
    holder = spec.get("holderIdentity") or ""
    held_for = float(spec.get("leaseDurationSeconds") or duration_s)
    if holder and holder != me and local_now < observed.seen_at + held_for:
        return None, observed
    out = {**spec, "holderIdentity": me, "leaseDurationSeconds": int(duration_s), "renewTime": rfc3339(now, micro=True)}
    if holder != me:
        out["acquireTime"] = rfc3339(now, micro=True)
        out["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
    return out, observed


class LeaseStore(Protocol):
    """What the elector needs of :class:`controller.kube.Kube` (this module stays free of the client)."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def write_lease(self, namespace: str, name: str, spec: dict[str, Any], old: dict[str, Any] | None) -> bool: ...


class Elector:
    """Acquire and keep the Lease ``settings.lease_namespace/settings.lease_name``."""

    def __init__(self, kube: LeaseStore, settings: Settings) -> None:
        self.kube, self.s = kube, settings
        self.lost = False
        self._observed: Observation | None = None
        #: ``time.monotonic()`` at the start of the last successful acquire or renewal.
        self.renewed_at: float | None = None

    @property
    def renew_deadline_s(self) -> float:
        """Seconds after a successful renewal's start by which the next one must succeed; never
        more than the lease duration (a misconfigured deadline must not outlive the lease)."""
        return min(self.s.renew_deadline_s, self.s.lease_duration_s)

    def _try(self) -> bool:
        lease = self.kube.get_lease(self.s.lease_namespace, self.s.lease_name)
        new, self._observed = decide(
            lease.get("spec") if lease else None,
            self.s.identity,
            datetime.now(timezone.utc),
            self.s.lease_duration_s,
            observed=self._observed,
            local_now=time.monotonic(),
        )
        if new is None:
            return False
        return self.kube.write_lease(self.s.lease_namespace, self.s.lease_name, new, lease)

    async def _attempt(self, timeout: float) -> bool:
        """One get-and-write of the Lease, abandoned after ``timeout`` seconds (each API call also
        has its own timeout, see Kube): a hung call counts as a failed attempt, never blocks. On
        success :attr:`renewed_at` is the attempt's start."""
        started = time.monotonic()
        try:
            fut = asyncio.get_running_loop().run_in_executor(None, self._try)
            ok = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            log.warning("lease attempt timed out after %.1fs", timeout)
            return False
        except Exception as err:  # an API hiccup is a failed attempt, not a crash
            log.warning("lease attempt failed: %s", err)
            return False
        if ok:
            self.renewed_at = started
        return ok

    async def acquire(self, stop: asyncio.Event) -> bool:
        log.info(
            "waiting for leadership",
            extra={"lease": f"{self.s.lease_namespace}/{self.s.lease_name}", "identity": self.s.identity},
        )
        while not stop.is_set():
            if await self._attempt(self.renew_deadline_s):
                log.info("became leader", extra={"identity": self.s.identity})
                return True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.retry_period_s)
        return False

    async def keep(self, done: asyncio.Event, on_lost: Callable[[], None] | None = None) -> None:
        """Renew every retry period until ``done`` is set. Every attempt shares one deadline,
        :attr:`renew_deadline_s` after the start of the last successful renewal; when it passes,
        set :attr:`lost` and call ``on_lost`` (the operator exits there) — before the lease could
        expire for a standby."""
        if self.renewed_at is None:
            self.renewed_at = time.monotonic()
        while not done.is_set():
            deadline = self.renewed_at + self.renew_deadline_s
            pause = min(self.s.retry_period_s, max(0.0, deadline - time.monotonic()))
            try:
                await asyncio.wait_for(done.wait(), pause)
                return
            except asyncio.TimeoutError:
                pass
            left = deadline - time.monotonic()
            if left > 0 and await self._attempt(left):
                continue
            if time.monotonic() >= deadline:
                log.error(
                    "lost leadership: could not renew the lease within %.1fs of the last renewal",
                    self.renew_deadline_s,
                )
                self.lost = True
                if on_lost is not None:
                    on_lost()
                return

    def release(self) -> None:
        """Hand the lease over at once on a clean shutdown (holder cleared)."""
        try:
            lease = self.kube.get_lease(self.s.lease_namespace, self.s.lease_name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.s.identity:
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.kube.write_lease(self.s.lease_namespace, self.s.lease_name, spec, lease)
        except Exception as err:
            log.warning("could not release the lease: %s", err)
