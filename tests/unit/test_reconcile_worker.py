"""The reconcile shell's serialisation and error policy (controller/worker.py), with a fake API.

The fake stands in for kube.Kube only to make timing and failures controllable; the real API
path is covered by tests/integration/test_controller*.py.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

from controller import metrics
from controller.settings import Settings
from controller.worker import Worker


class FakeKube:
    def __init__(self, job, fail=None, delay=0.0):
        self.job, self.fail, self.delay = job, fail, delay
        self.gets = 0
        self.created, self.statuses = [], []

    def get_job(self, ns, name):
        self.gets += 1
        time.sleep(self.delay)
        if self.fail:
            raise self.fail
        return self.job

    def observe(self, job):
        return [], None, None, {}

    def leftover_workloads(self, ns, name):  # Kueue Workloads a deleted job left (none here)
        return []

    def write_status(self, job, status):
        self.statuses.append(status)
        self.job = {**job, "status": status}

    def event(self, job, ev):
        pass

    def create(self, obj):
        self.created.append(obj["metadata"]["name"])


JOB = {
    "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1},
    "spec": {"image": "i", "model": {"name": "m"}, "dataset": {"trainCsv": "t"}, "output": {"path": "o"}},
}
CLOCK = lambda: datetime(2026, 1, 1, tzinfo=timezone.utc)  # noqa: E731


def test_one_pass_creates_children_then_converges():
    kube = FakeKube(JOB)
    w = Worker(kube, Settings(), clock=CLOCK)
    w.reconcile("ns", "j")
    assert kube.created == ["j-config", "j", "j-node-0"] and kube.statuses[-1]["phase"] == "Created"


def test_burst_of_triggers_coalesces_into_at_most_two_passes():
    kube = FakeKube(JOB, delay=0.2)
    w = Worker(kube, Settings(), clock=CLOCK)
    threads = [threading.Thread(target=w.reconcile, args=("ns", "j")) for _ in range(20)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert 1 <= kube.gets <= 2


def test_errors_never_raise_and_back_off():
    before = metrics.RECONCILE_ERRORS._value.get()
    kube = FakeKube(JOB, fail=RuntimeError("apiserver down"))
    w = Worker(kube, Settings(), clock=CLOCK)
    delays = []
    for _ in range(4):
        t0 = time.monotonic()
        w.reconcile("ns", "j")
        delays.append(w.due_at(("ns", "j")) - t0)
    assert [round(d) for d in delays] == [1, 2, 4, 8]
    assert metrics.RECONCILE_ERRORS._value.get() - before == 4
    kube.fail = None
    w.reconcile("ns", "j")
    assert w.due_at(("ns", "j")) is None  # success: no retry scheduled, backoff reset


def test_deleted_job_is_forgotten():
    kube = FakeKube(None)
    w = Worker(kube, Settings(), clock=CLOCK)
    w.schedule(("ns", "j"), 1.0)
    w.reconcile("ns", "j")
    assert w.due_at(("ns", "j")) is None and not kube.created


def test_due_store_is_safe_while_passes_write_it():
    """Passes on worker threads schedule retries while the resync loop takes due keys: every
    scheduled key is taken exactly once and nothing raises (the old loop raised KeyError here)."""
    kube = FakeKube(JOB, fail=RuntimeError("apiserver down"))
    w = Worker(kube, Settings(), clock=CLOCK)
    keys = [("ns", f"j{i}") for i in range(200)]
    taken: list = []
    stop = threading.Event()

    def taker():
        while not stop.is_set():
            taken.extend(w.take_due(float("inf")))

    t = threading.Thread(target=taker)
    t.start()
    writers = [threading.Thread(target=lambda ks=keys[i::4]: [w.schedule(k, 0.0) for k in ks]) for i in range(4)]
    for x in writers:
        x.start()
    for x in writers:
        x.join()
    stop.set()
    t.join()
    taken.extend(w.take_due(float("inf")))
    assert sorted(taken) == sorted(keys)
