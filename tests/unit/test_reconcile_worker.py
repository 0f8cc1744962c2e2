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
    # The job's NetworkPolicy (named like the job, controller/netpol.py) before its other children.
    assert kube.created == ["j", "j-config", "j", "j-node-0"]
    assert kube.statuses[-1]["phase"] == "Created"


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
    assert w.due_at(("ns", "j")) is None
    assert not kube.created


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


class OrderKube(FakeKube):
    """Records every write in order; the ConfigMap it reports is an outdated one."""

    def __init__(self, job, stale_cm, update_error=None, refuse=None):
        super().__init__(job)
        self.stale_cm, self.update_error, self.refuse = stale_cm, update_error, refuse
        self.calls = []

    def observe(self, job):
        return [], None, self.stale_cm, {}

    def update(self, obj):
        self.calls.append(("update", obj["metadata"]["name"]))
        if self.update_error:
            raise self.update_error

    def create(self, obj):
        self.calls.append(("create", obj["metadata"]["name"]))
        if self.refuse and obj["metadata"]["name"] == self.refuse.name:
            raise self.refuse
        super().create(obj)


def _stale_cm():
    from controller import builders

    cm = builders.configmap({**JOB, "spec": {**JOB["spec"], "training": {"epochs": 9}}})
    cm["metadata"]["resourceVersion"] = "3"
    return cm


def test_the_configmap_is_updated_before_any_pod_is_created():
    """issue #18 (10): pods never start on the old job.yaml."""
    kube = OrderKube(JOB, _stale_cm())
    Worker(kube, Settings(), clock=CLOCK).reconcile("ns", "j")
    assert kube.calls[0] == ("update", "j-config")
    assert ("create", "j-node-0") in kube.calls


def test_a_conflict_on_the_configmap_update_stops_the_pass_before_pods_and_retries():
    from controller.kube import Conflict

    kube = OrderKube(JOB, _stale_cm(), update_error=Conflict("ConfigMap j-config: 409 Conflict"))
    w = Worker(kube, Settings(), clock=CLOCK)
    t0 = time.monotonic()
    w.reconcile("ns", "j")
    assert kube.calls == [("update", "j-config")]
    assert w.due_at(("ns", "j")) - t0 < 1.0


def test_a_refused_create_is_shown_on_the_job_by_the_next_pass():
    """issue #18 (5): a 403 from a ResourceQuota is not only logged: condition + Warning event."""
    from controller.kube import Refused

    events = []
    kube = OrderKube(JOB, None, refuse=Refused("Pod", "j-node-0", 403, "403 Forbidden: exceeded quota: q"))
    kube.event = lambda job, ev: events.append(ev)
    w = Worker(kube, Settings(), clock=CLOCK)
    w.reconcile("ns", "j")
    assert w.due_at(("ns", "j")) is not None  # retried with backoff
    w.reconcile("ns", "j")
    cond = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == "PodsWaiting")
    assert (cond["reason"], cond["status"]) == ("PodCreateFailed", "True")
    assert "exceeded quota" in cond["message"]
    assert ("Warning", "PodCreateFailed") in [(e.type, e.reason) for e in events]
