"""Table tests of the queue-admission step (controller/queue.py) through the pure plan().

A job labelled ``kueue.x-k8s.io/queue-name`` gets one Workload and no pods until Kueue admits it;
an eviction stops its pods and sends it back to Queued without counting anything; the end of the
job writes Finished and lets the Workload's finalizer go. Plain dicts in, a Plan out.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest

from controller import naming, queue
from controller.reconcile import Observed, plan

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
UID = "uid-1"
WL = "finetunejob-j"


def job(status=None, labels=None, **spec_over):
    spec = {
        "image": "img:1",
        "model": {"name": "ViT-B-32"},
        "dataset": {"trainCsv": "/data/train.csv"},
        "output": {"path": "/out"},
        "numNodes": 2,
        "resources": {"requests": {"cpu": "1500m"}},
        **spec_over,
    }
    return {
        "apiVersion": "kubeclip.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": UID,
            "generation": 1,
            "labels": {queue.QUEUE_LABEL: "team-a"} if labels is None else labels,
        },
        "spec": spec,
        "status": status or {},
    }


def pod(i, phase="Running", attempt=0, deleting=False):
    p = {
        "metadata": {
            "name": f"j-node-{i}",
            "uid": f"pod-{i}",
            "labels": {naming.LABEL_JOB: "j", naming.LABEL_INDEX: str(i), naming.LABEL_ATTEMPT: str(attempt)},
            "ownerReferences": [{"uid": UID, "controller": True}],
        },
        "status": {"phase": phase},
    }
    if deleting:
        p["metadata"]["deletionTimestamp"] = "2026-01-02T03:04:00Z"
    return p


def cond(type_, status, reason="R", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "t"}


def workload(*conds, admission=None, owner=UID, active=True, finalizers=(queue.FINALIZER,)):
    wl = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": WL,
            "namespace": "ns",
            "resourceVersion": "5",
            "finalizers": list(finalizers),
            "ownerReferences": [{"uid": owner, "controller": True}],
        },
        "spec": {"queueName": "team-a", "active": active, "podSets": []},
        "status": {"conditions": list(conds)},
    }
    if admission is not None:
        wl["status"]["admission"] = admission
    return wl


ADMISSION = {"clusterQueue": "cq", "podSetAssignments": [{"name": "node", "flavors": {"cpu": "default-flavor"}}]}
FLAVOR = {
    "metadata": {"name": "default-flavor"},
    "spec": {
        "nodeLabels": {"pool": "gpu-a"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
ADMITTED = (cond("QuotaReserved", "True"), cond("Admitted", "True"))


def run(j, pods=(), q=None):
    return plan(j, Observed(pods=tuple(pods), service={}, configmap=None, now=NOW, queue=q or queue.Observed()))


def created(p, kind):
    return [o for o in p.create if o["kind"] == kind]


def test_a_labelled_job_gets_one_workload_and_no_pods():
    p = run(job())
    (wl,) = created(p, "Workload")
    assert created(p, "Pod") == []
    assert p.status["phase"] == "Queued"
    assert p.status["nodes"]["total"] == 2
    assert wl["metadata"]["name"] == WL
    assert wl["metadata"]["finalizers"] == [queue.FINALIZER]
    assert wl["metadata"]["labels"][queue.JOB_UID_LABEL] == UID
    assert wl["metadata"]["ownerReferences"][0]["uid"] == UID
    assert wl["spec"]["queueName"] == "team-a"
    assert wl["spec"]["active"] is True
    (ps,) = wl["spec"]["podSets"]
    assert ps["count"] == 2
    assert ps["name"] == "node"
    assert ps["template"]["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1500m"}
    assert "priorityClassRef" not in wl["spec"]
    assert [e.reason for e in p.events] == ["Queued"]


def test_a_job_without_the_label_is_not_touched_by_the_queue_step():
    p = run(job(labels={}))
    assert created(p, "Workload") == []
    assert len(created(p, "Pod")) == 2
    assert not p.workloads


def test_the_priority_class_label_sets_reference_and_value_or_waits_for_the_class():
    labels = {queue.QUEUE_LABEL: "team-a", queue.PRIORITY_LABEL: "high"}
    missing = run(job(labels=labels))
    assert created(missing, "Workload") == []
    assert missing.status["phase"] == "Queued"
    assert "WorkloadPriorityClass high" in missing.status["message"]
    assert missing.requeue_after
    wpc = {"metadata": {"name": "high"}, "value": 1000}
    (wl,) = created(run(job(labels=labels), q=queue.Observed(priority=wpc)), "Workload")
    assert wl["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "high",
    }
    assert wl["spec"]["priority"] == 1000


def test_waiting_shows_kueues_message_in_the_status():
    msg = "couldn't assign flavors to pod set node: insufficient unused quota for cpu in flavor default-flavor"
    wl = workload(cond("QuotaReserved", "False", "Pending", msg))
    p = run(job({"phase": "Queued"}), q=queue.Observed(workloads=(wl,)))
    assert p.status["phase"] == "Queued"
    assert msg in p.status["message"]
    assert p.status["queue"]["pending"].endswith(msg)
    assert p.status["queue"]["localQueue"] == "team-a"
    queued = next(c for c in p.status["conditions"] if c["type"] == "Queued")
    assert queued["status"] == "True"
    assert msg in queued["message"]
    assert created(p, "Pod") == []
    assert created(p, "Workload") == []
    assert p.requeue_after


def test_admission_creates_the_pods_with_the_flavors_node_labels_and_tolerations():
    wl = workload(*ADMITTED, admission=ADMISSION)
    q = queue.Observed(workloads=(wl,), flavors={"default-flavor": FLAVOR})
    p = run(job({"phase": "Queued"}, nodeSelector={"zone": "a"}), q=q)
    pods = created(p, "Pod")
    assert [x["metadata"]["name"] for x in pods] == ["j-node-0", "j-node-1"]
    for x in pods:
        assert x["spec"]["nodeSelector"] == {"zone": "a", "pool": "gpu-a"}
        assert {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"} in x["spec"]["tolerations"]
    assert p.status["phase"] == "Created"
    assert p.status["reason"] == "Admitted"
    assert "ClusterQueue cq" in p.status["message"]
    assert p.status["queue"]["clusterQueue"] == "cq"
    assert "pending" not in p.status["queue"]
    queued = next(c for c in p.status["conditions"] if c["type"] == "Queued")
    assert queued["status"] == "False"
    assert p.status.get("startTime")
    assert [e.reason for e in p.events] == ["Admitted"]


def test_pods_ready_is_written_once_every_node_runs():
    wl = workload(*ADMITTED, admission=ADMISSION)
    q = queue.Observed(workloads=(wl,), flavors={"default-flavor": FLAVOR})
    status = {"phase": "Created", "restartCount": 0}
    p = run(job(status), pods=[pod(0), pod(1, phase="Pending")], q=q)
    assert not p.workloads
    p = run(job(status), pods=[pod(0), pod(1)], q=q)
    (w,) = p.workloads
    assert w.what == "status"
    assert p.status["phase"] == "Running"
    ready = next(c for c in w.body["status"]["conditions"] if c["type"] == "PodsReady")
    assert ready["status"] == "True"
    assert w.body["metadata"]["resourceVersion"] == "5"
    done = workload(*ADMITTED, cond("PodsReady", "True"), admission=ADMISSION)
    assert not run(job(status), pods=[pod(0), pod(1)], q=queue.Observed(workloads=(done,), flavors=q.flavors)).workloads


@pytest.mark.parametrize("why", ["Preempted", "PodsReadyTimeout", "Deactivated", "ClusterQueueStopped"])
def test_eviction_stops_the_pods_and_queues_the_job_without_counting_a_failure(why):
    running = {"phase": "Running", "restartCount": 0, "failedAttempts": 0, "disruptedAttempts": 0, "startTime": "t"}
    evicted = cond("Evicted", "True", why, "Preempted to accommodate a workload (UID: x) due to prioritization")
    wl = workload(*ADMITTED, evicted, admission=ADMISSION)
    q = queue.Observed(workloads=(wl,), flavors={"default-flavor": FLAVOR})
    p = run(job(running), pods=[pod(0), pod(1)], q=q)
    assert sorted(d.name for d in p.delete) == ["j-node-0", "j-node-1"]
    assert created(p, "Pod") == []
    assert p.status["phase"] == "Queued"
    assert why in p.status["reason"]
    assert "evicted by Kueue" in p.status["message"]
    assert (p.status["restartCount"], p.status["failedAttempts"], p.status["disruptedAttempts"]) == (0, 0, 0)
    assert "startTime" not in p.status
    assert not p.workloads  # the quota stays held while pods still run
    # The pods are going: still nothing counted, no quota given back yet.
    going = run(job(p.status), pods=[pod(0, deleting=True), pod(1, deleting=True)], q=q)
    assert going.status is None or going.status["restartCount"] == 0
    assert not going.workloads
    # No pod left: the quota is given back and the Workload requeued.
    gone = run(job(p.status), pods=[], q=q)
    (w,) = gone.workloads
    st = w.body["status"]
    assert w.what == "status"
    assert "admission" not in st
    by_type = {c["type"]: c for c in st["conditions"]}
    assert by_type["QuotaReserved"]["status"] == "False"
    assert by_type["Admitted"]["status"] == "False"
    assert by_type["Requeued"]["status"] == "True"
    assert by_type["Evicted"]["status"] == "True"
    # Evicted with nothing admitted any more: wait, write nothing.
    cleared = copy.deepcopy(wl)
    cleared["status"].pop("admission")
    assert not run(job(p.status), q=queue.Observed(workloads=(cleared,))).workloads


def test_readmission_after_an_eviction_starts_the_same_attempt_again():
    queued = {"phase": "Queued", "restartCount": 0, "failedAttempts": 0, "disruptedAttempts": 0}
    wl = workload(*ADMITTED, cond("Evicted", "False"), cond("Requeued", "True"), admission=ADMISSION)
    p = run(job(queued), q=queue.Observed(workloads=(wl,), flavors={"default-flavor": FLAVOR}))
    pods = created(p, "Pod")
    assert len(pods) == 2
    assert {x["metadata"]["labels"][naming.LABEL_ATTEMPT] for x in pods} == {"0"}
    assert p.status["phase"] == "Created"
    assert p.status["restartCount"] == 0


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_the_end_of_the_job_writes_finished_then_lets_the_finalizer_go(phase):
    wl = workload(*ADMITTED, cond("PodsReady", "True"), admission=ADMISSION)
    done = {"phase": phase, "message": "j-node-0 completed", "completionTime": "2026-01-02T03:00:00Z"}
    p = run(job(done), q=queue.Observed(workloads=(wl,)))
    status_w, object_w = p.workloads
    finished = next(c for c in status_w.body["status"]["conditions"] if c["type"] == "Finished")
    assert status_w.what == "status"
    assert finished["status"] == "True"
    assert finished["reason"] == phase
    assert object_w.what == "object"
    assert object_w.body["metadata"]["finalizers"] == []
    # Both done: nothing more to write.
    let_go = workload(*ADMITTED, cond("Finished", "True"), admission=ADMISSION, finalizers=())
    assert not run(job(done), q=queue.Observed(workloads=(let_go,))).workloads


def test_a_deleted_jobs_workload_is_let_go_and_a_same_named_job_gets_its_own():
    old = workload(*ADMITTED, admission=ADMISSION, owner="uid-old")
    p = run(job(), q=queue.Observed(workloads=(old,)))
    assert [w.what for w in p.workloads] == ["status", "object"]
    assert len(created(p, "Workload")) == 1
    assert created(p, "Pod") == []
    assert [w.what for w in queue.release_orphans([old], NOW)] == ["status", "object"]


def test_suspend_is_the_workloads_active_false_and_back():
    wl = workload(*ADMITTED, admission=ADMISSION)
    run_policy = {"suspend": True}
    p = run(
        job({"phase": "Running", "restartCount": 0}, runPolicy=run_policy),
        pods=[pod(0), pod(1)],
        q=queue.Observed(workloads=(wl,)),
    )
    (w,) = p.workloads
    assert w.what == "object"
    assert w.body["spec"]["active"] is False
    assert p.status["phase"] == "Suspended"
    assert len(p.delete) == 2
    off = workload(admission=None, active=False)
    p = run(
        job({"phase": "Suspended", "restartCount": 0, "conditions": [cond("Suspended", "True")]}),
        q=queue.Observed(workloads=(off,)),
    )
    (w,) = p.workloads
    assert w.body["spec"]["active"] is True
    assert p.status["phase"] == "Queued"
    assert created(p, "Pod") == []
    (suspended,) = [c for c in p.status["conditions"] if c["type"] == "Suspended"]
    assert suspended["status"] == "False"
    # Created suspended: the Workload starts inactive.
    (new,) = created(run(job(runPolicy=run_policy)), "Workload")
    assert new["spec"]["active"] is False


def test_the_label_without_kueue_fails_fast_with_one_reason():
    p = run(job(), q=queue.Observed(api=False))
    assert p.status["phase"] == "Failed"
    assert p.status["reason"] == "KueueNotInstalled"
    assert "kueue.x-k8s.io/queue-name=team-a" in p.status["message"]
    assert "install Kueue" in p.status["message"]
    assert created(p, "Pod") == []
    assert created(p, "Workload") == []
    forbidden = run(job(), q=queue.Observed(api=False, forbidden=True))
    assert forbidden.status["phase"] == "Failed"
    assert "kueue.enabled=true" in forbidden.status["message"]


def test_an_unreadable_flavor_holds_the_pods_without_changing_the_phase():
    wl = workload(*ADMITTED, admission=ADMISSION)
    p = run(job({"phase": "Queued", "reason": "Queued", "message": "m"}), q=queue.Observed(workloads=(wl,)))
    assert created(p, "Pod") == []
    assert p.requeue_after
    assert p.status is None or p.status["phase"] == "Queued"
