"""Leader election (controller/leader.py): the pure rule (decide: client-go's local-clock rule),
then the elector and the operator's shutdown against the real API server's Lease: one renew
deadline across attempts (the leader gives up before a standby could take over), and a clean stop
that drains the passes in flight before it releases the Lease."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from controller.leader import Elector, decide
from controller.operator import Passes, drain_and_release
from controller.settings import Settings

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _spec(holder, renewed, duration=15, transitions=0):
    return {
        "holderIdentity": holder,
        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "leaseDurationSeconds": duration,
        "leaseTransitions": transitions,
    }


def test_free_lease_is_taken():
    new, _ = decide(None, "me", NOW, 15)
    assert new["holderIdentity"] == "me"
    assert new["leaseDurationSeconds"] == 15
    assert new["leaseTransitions"] == 0


def test_another_holders_lease_expires_by_our_clock_not_by_its_renew_time():
    """Its renewTime is an hour old by our wall clock (skewed clocks): still valid for 15 s of our
    time from when we first saw it, then taken over, and the takeover is counted."""
    stale = _spec("other", NOW - timedelta(hours=1), transitions=3)
    new, seen = decide(stale, "me", NOW, 15, local_now=100.0)
    assert new is None
    new, seen = decide(stale, "me", NOW, 15, observed=seen, local_now=114.9)
    assert new is None
    new, _ = decide(stale, "me", NOW, 15, observed=seen, local_now=115.0)
    assert new["holderIdentity"] == "me"
    assert new["leaseTransitions"] == 4
    assert new["acquireTime"] == new["renewTime"]


def test_a_renewing_holder_keeps_its_lease_even_with_a_clock_far_ahead_or_behind():
    seen = None
    for i, skew in enumerate((timedelta(hours=-2), timedelta(hours=3), timedelta(minutes=-30))):
        new, seen = decide(
            _spec("other", NOW + skew + timedelta(seconds=i)), "me", NOW, 15, observed=seen, local_now=10.0 * (i + 1)
        )
        assert new is None  # each renewal changes the record: we restart our own count


def test_own_lease_is_renewed_without_a_transition():
    old = _spec("me", NOW - timedelta(seconds=2), transitions=2)
    old["acquireTime"] = "2025-12-31T23:00:00.000000Z"
    new, _ = decide(old, "me", NOW, 15)
    assert new["leaseTransitions"] == 2
    assert new["acquireTime"] == old["acquireTime"]
    assert new["renewTime"] != old["renewTime"]


def test_released_lease_is_free():
    new, _ = decide({**_spec("", NOW), "leaseDurationSeconds": 1}, "me", NOW, 15)
    assert new["holderIdentity"] == "me"


# -- against the real API server --------------------------------------------------------------------


def _settings(namespace, identity, lease, deadline, retry):
    return Settings(
        lease_namespace=namespace,
        lease_name="leader-test",
        identity=identity,
        lease_duration_s=lease,
        renew_deadline_s=deadline,
        retry_period_s=retry,
    )


@pytest.fixture
def kube(cluster):
    from controller.kube import Kube

    with cluster.api_client() as api:
        yield Kube(api=api, timeout_s=5.0)


def _holder(kube, namespace):
    lease = kube.get_lease(namespace, "leader-test")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


class Failing:
    """The real Kube, until ``trouble()``: then Lease writes fail at once for ``fast_s`` seconds
    (an API server refusing connections), then hang (one that accepts and never answers)."""

    def __init__(self, kube, fast_s):
        self.kube, self.fast_s = kube, fast_s
        self.trouble_at = None
        self.unhang = threading.Event()

    def trouble(self):
        self.trouble_at = time.monotonic()

    def get_lease(self, namespace, name):
        return self.kube.get_lease(namespace, name)

    def write_lease(self, namespace, name, spec, old):
        if self.trouble_at is None:
            return self.kube.write_lease(namespace, name, spec, old)
        if time.monotonic() - self.trouble_at < self.fast_s:
            raise ConnectionRefusedError("connection refused")
        self.unhang.wait(30)
        raise TimeoutError("no answer")


@pytest.mark.cluster
def test_the_leader_gives_up_within_one_deadline_across_attempts_before_a_standby_takes_over(kube, namespace):
    """Renewals fail fast for a while, then the one attempt started just before the deadline hangs.
    The leader must give up at the deadline (renew_deadline after its last good renewal began),
    not give that attempt a fresh deadline of its own: by then the standby could already lead."""
    lease, deadline, retry = 4.0, 3.0, 0.25
    store = Failing(kube, fast_s=2.2)
    leader = Elector(store, _settings(namespace, "leader", lease, deadline, retry))
    standby = Elector(kube, _settings(namespace, "standby", lease, deadline, retry))
    times = {}

    async def scenario():
        stop, done = asyncio.Event(), asyncio.Event()
        assert await leader.acquire(stop)
        keep = asyncio.create_task(leader.keep(done, on_lost=lambda: times.setdefault("lost", time.monotonic())))

        async def stand_by():
            assert await standby.acquire(stop)
            times["standby"] = time.monotonic()

        waiting = asyncio.create_task(stand_by())
        await asyncio.sleep(1.0)  # a few good renewals
        store.trouble()
        await asyncio.wait_for(keep, 15)
        await asyncio.wait_for(waiting, 15)
        done.set()
        # The leader has given up and the standby leads: let the hung attempt's thread end now, or
        # asyncio.run's executor shutdown waits out its 30 s hang (the test took 33 s instead of 8).
        store.unhang.set()

    try:
        asyncio.run(scenario())
    finally:
        store.unhang.set()
    assert leader.lost
    assert "lost" in times
    assert times["lost"] - leader.renewed_at <= deadline + 0.8, "gave up later than one renew deadline"
    assert times["lost"] < times["standby"], "two leaders overlapped"
    assert _holder(kube, namespace) == "standby"


@pytest.mark.cluster
def test_a_clean_stop_drains_the_passes_in_flight_before_it_releases_the_lease(kube, namespace):
    elector = Elector(kube, _settings(namespace, "draining", 2.0, 1.5, 0.2))
    in_pass, finish = threading.Event(), threading.Event()
    seen = {}

    def slow_pass():
        in_pass.set()
        finish.wait(20)
        seen["holder at the end of the pass"] = _holder(kube, namespace)

    async def scenario():
        assert await elector.acquire(asyncio.Event())
        renewing = asyncio.Event()
        keep = asyncio.create_task(elector.keep(renewing))
        passes = Passes()
        worker = threading.Thread(target=passes.run, args=(slow_pass,))
        worker.start()
        assert await asyncio.get_running_loop().run_in_executor(None, in_pass.wait, 5)
        stopping = asyncio.create_task(drain_and_release(passes, elector, renewing, keep, timeout=20))
        await asyncio.sleep(3.0)  # longer than the lease: it is renewed while the pass runs
        seen["holder while draining"] = _holder(kube, namespace)
        late = []
        passes.run(late.append, 1)
        seen["pass started after the stop"] = bool(late)
        finish.set()
        seen["drained"] = await asyncio.wait_for(stopping, 10)
        await asyncio.wait_for(keep, 5)
        worker.join(5)

    asyncio.run(scenario())
    assert seen == {
        "holder while draining": "draining",
        "pass started after the stop": False,
        "holder at the end of the pass": "draining",
        "drained": True,
    }
    assert _holder(kube, namespace) == "", "the lease was not released after the drain"
    assert not elector.lost


@pytest.mark.cluster
def test_a_pass_that_does_not_drain_keeps_the_lease_from_being_released(kube, namespace):
    elector = Elector(kube, _settings(namespace, "stuck", 2.0, 1.5, 0.2))
    finish = threading.Event()

    async def scenario():
        assert await elector.acquire(asyncio.Event())
        renewing = asyncio.Event()
        keep = asyncio.create_task(elector.keep(renewing))
        passes = Passes()
        threading.Thread(target=passes.run, args=(lambda: finish.wait(20),), daemon=True).start()
        await asyncio.sleep(0.2)
        drained = await drain_and_release(passes, elector, renewing, keep, timeout=0.5)
        await asyncio.wait_for(keep, 5)
        return drained

    try:
        assert asyncio.run(scenario()) is False
        assert _holder(kube, namespace) == "stuck"  # left to expire, after the process has ended
    finally:
        finish.set()


LOSER = """
import asyncio, sys, threading, time
from controller.kube import Kube
from controller.leader import Elector
from controller.operator import exit_lost
from controller.settings import Settings

s = Settings(lease_namespace=sys.argv[1], lease_name="leader-test", identity="doomed",
             lease_duration_s=3.0, renew_deadline_s=2.0, retry_period_s=0.2)
elector = Elector(Kube(timeout_s=5.0), s)

async def main():
    assert await elector.acquire(asyncio.Event())
    threading.Thread(target=time.sleep, args=(3600,)).start()  # a pass in flight (not a daemon)
    print("leader", flush=True)
    await elector.keep(asyncio.Event(), on_lost=exit_lost)
    print("keep returned", flush=True)

asyncio.run(main())
"""


@pytest.mark.cluster
def test_losing_the_lease_ends_the_process_at_once_passes_in_flight_included(cluster, namespace):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**cluster.env(), "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOSER, namespace], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "leader"
        # Another replica's record: the leader's renewals now fail (its lease is no longer its own).
        steal = {"spec": {"holderIdentity": "thief", "leaseDurationSeconds": 3600}}
        cluster.kubectl("patch", "lease", "leader-test", "-n", namespace, "--type=merge", "-p", json.dumps(steal))
        t0 = time.monotonic()
        code = proc.wait(timeout=10)
        out = proc.stdout.read()
    finally:
        proc.kill()
    assert code == 1, out
    assert time.monotonic() - t0 <= 2.0 + 1.5, "gave up later than the renew deadline"
    assert "keep returned" not in out
    assert "lost leadership" in out
