"""Leader election through a ``coordination.k8s.io/v1`` Lease, so several replicas are safe.

Who uses it and why it exists: :func:`controller.operator.main` waits in :meth:`Elector.acquire`
before it starts kopf, and runs :meth:`Elector.keep` beside it; losing the lease stops the
operator and the process exits non-zero, so Kubernetes restarts it as a fresh candidate (what
client-go's leaderelection does too). kopf's own peering (its KopfPeering CRDs) is not used:
kopf runs ``standalone``. :func:`decide` is the pure rule, tested without an API server.
"""

from __future__ import annotations

import asyncio
import logging
import time
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

    async def _attempt(self) -> bool:
        """One get-and-write of the Lease, abandoned after the renew deadline (each API call also
        has its own timeout, see Kube): a hung call counts as a failed attempt, never blocks."""
        try:
            fut = asyncio.get_running_loop().run_in_executor(None, self._try)
            return await asyncio.wait_for(fut, self.s.renew_deadline_s)
        except asyncio.TimeoutError:
            log.warning("lease attempt timed out after %.0fs", self.s.renew_deadline_s)
            return False
        except Exception as err:  # an API hiccup is a failed attempt, not a crash
            log.warning("lease attempt failed: %s", err)
            return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        log.info(
            "waiting for leadership",
            extra={"lease": f"{self.s.lease_namespace}/{self.s.lease_name}", "identity": self.s.identity},
        )
        while not stop.is_set():
            if await self._attempt():
                log.info("became leader", extra={"identity": self.s.identity})
                return True
            try:
                await asyncio.wait_for(stop.wait(), self.s.retry_period_s)
            except asyncio.TimeoutError:
                pass
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew every retry period; give up (set ``lost`` and ``stop``) after the renew deadline."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.s.retry_period_s)
                return
            except asyncio.TimeoutError:
                pass
            if await self._attempt():
                last_ok = loop.time()
            elif loop.time() - last_ok > self.s.renew_deadline_s:
                log.error("lost leadership: could not renew the lease in %.0fs", self.s.renew_deadline_s)
                self.lost = True
                stop.set()
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
