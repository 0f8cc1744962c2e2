"""Table tests of the pure reconcile (controller/reconcile.py): plain dicts in, a Plan out."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from controller import naming
from controller.reconcile import Delete, Observed, classify, plan
from controller.times import rfc3339
from kubeclip.api import parse_manifest

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
UID = "uid-1"


def job(status=None, **spec_over):
    spec = {
        "image": "img:1",
        "model": {"name": "ViT-B-32"},
        "dataset": {"trainCsv": "/data/train.csv"},
        "output": {"path": "/out"},
        "numNodes": 2,
        "numProcPerNode": 2,
    }
    for k, v in spec_over.items():
        spec[k] = v
    return {
        "apiVersion": "kubeclip.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "7"},
        "spec": spec,
        "status": status or {},
    }


def pod(
    i,
    phase="Running",
    attempt=0,
    *,
    exit_code=None,
    reason=None,
    message="",
    pod_reason=None,
    deleting=False,
    owner=UID,
    conditions=None,
):
    p = {
        "metadata": {
            "name": f"j-node-{i}",
            "uid": f"pod-{i}-{attempt}",
            "labels": {naming.LABEL_JOB: "j", naming.LABEL_INDEX: str(i), naming.LABEL_ATTEMPT: str(attempt)},
            "ownerReferences": [{"uid": owner, "controller": True}],
        },
        "status": {"phase": phase},
    }
    if exit_code is not None:
        p["status"]["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": exit_code, "reason": reason or "Error", "message": message}},
            }
        ]
    if pod_reason:
        p["status"]["reason"] = pod_reason
    if conditions:
        p["status"]["conditions"] = conditions
    if deleting:
        p["metadata"]["deletionTimestamp"] = rfc3339(NOW)
    return p


def children(j):
    from controller import builders
    from kubeclip.api import ConfigError, parse_job_spec

    try:
        svc = builders.service(j, parse_job_spec(j["spec"]))
    except ConfigError:
        svc = None
    return {"configmap": builders.configmap(j), "service": svc}


def observe(j, pods=(), progress=None, now=NOW, with_children=True, nodes=None):
    kw = children(j) if with_children else {}
    return Observed(pods=tuple(pods), progress=progress, now=now, nodes=nodes or {}, **kw)


def run(j, pods=(), **kw):
    """Plan, then 'apply' the status to the job the way the API would (for multi-pass tests)."""
    p = plan(j, observe(j, pods, **kw))
    if p.status is not None:
        j = {**j, "status": p.status}
    return p, j


def names(objs):
    return sorted(o["metadata"]["name"] for o in objs)


def _running_job(backoff=2, **kw):
    _, j = run(job(runPolicy={"backoffLimit": backoff, **kw}), [])
    _, j = run(j, [pod(0), pod(1)])
    assert j["status"]["phase"] == "Running"
    return j


def _node(name, ready="True", since=NOW - timedelta(hours=1), taints=()):
    return {
        "metadata": {"name": name},
        "spec": {"taints": list(taints)},
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": rfc3339(since)}]},
    }


EVICTED = [
    {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
    }
]


def finished_at(p, seconds_before_now):
    """Give a failed pod's trainer container a finishedAt (the kubelet always sets one)."""
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    term["finishedAt"] = rfc3339(NOW - timedelta(seconds=seconds_before_now))
    return p


def on_node(p, node):
    p["spec"] = {"nodeName": node}
    return p


def waiting_pod(i, reason, message="", attempt=0):
    p = pod(i, "Pending", attempt)
    p["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}
    ]
    return p


def unschedulable_pod(i, message="0/1 nodes are available: 1 Insufficient cpu.", attempt=0):
    p = pod(i, "Pending", attempt)
    p["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    ]
    return p


def condition(j, type_):
    return next((c for c in j["status"].get("conditions") or [] if c["type"] == type_), None)


# ---- step: finished (a terminal job: cleanup and TTL only) ---------------------------------------


def test_terminal_job_stays_terminal_and_ttl_deletes_it():
    j = _running_job(ttlSecondsAfterFinished=60)
    p, j = run(j, [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)])
    assert p.requeue_after == 60
    assert not p.delete_job
    later = plan(j, observe(j, [pod(0, "Failed", exit_code=137)], now=NOW + timedelta(seconds=30)))
    assert later.status is None
    assert not later.delete_job
    assert later.requeue_after == pytest.approx(30)
    due = plan(j, observe(j, [], now=NOW + timedelta(seconds=60)))
    assert due.delete_job
    assert due.status is None


def test_ttl_zero_deletes_at_once():
    j = _running_job(ttlSecondsAfterFinished=0)
    p, _ = run(j, [pod(0, "Succeeded", exit_code=0), pod(1)])
    assert p.delete_job


# ---- step: invalid_spec (and the children a valid spec needs) ------------------------------------


def test_invalid_spec_fails_once_and_never_loops():
    j = job(training={"batchSize": 0})
    p, j = run(j, [])
    assert p.status["phase"] == "Failed"
    assert p.status["reason"] == "InvalidSpec"
    assert "spec.training.batchSize" in p.status["message"]
    assert not p.create
    again = plan(j, observe(j))
    assert again.empty
    assert again.requeue_after is None


def test_no_image_anywhere_is_invalid_spec_but_default_image_works():
    j = job()
    del j["spec"]["image"]
    assert plan(j, observe(j)).status["reason"] == "InvalidSpec"
    p = plan(j, observe(j), default_image="reg/trainer:2")
    assert {o["spec"]["containers"][0]["image"] for o in p.create if o["kind"] == "Pod"} == {"reg/trainer:2"}


def test_cross_field_rules_are_enforced_without_the_crd():
    j = job(volumeMounts=[{"name": "nope", "mountPath": "/data"}])
    assert "not a volume" in plan(j, observe(j)).status["message"]
    j = job(env=[{"name": "RANK", "value": "3"}])
    assert "RANK is set by the controller" in plan(j, observe(j)).status["message"]
    j = job(resources={"limits": {"nvidia.com/gpu": 4}})  # numProcPerNode is 2
    assert "numProcPerNode" in plan(j, observe(j)).status["message"]


def test_configmap_holds_only_the_trainer_part_and_the_trainer_accepts_it():
    j = job(volumes=[{"name": "d", "hostPath": {"path": "/x"}}], volumeMounts=[{"name": "d", "mountPath": "/data"}])
    cm = next(o for o in plan(j, observe(j, with_children=False)).create if o["kind"] == "ConfigMap")
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    assert "volumes" not in doc["spec"]
    assert "image" not in doc["spec"]
    name, spec = parse_manifest(doc)
    assert name == "j"
    assert spec.numNodes == 2
    assert spec.dataset.trainCsv == "/data/train.csv"


def test_configmap_drift_is_repaired():
    j = _running_job()
    obs = observe(j, [pod(0), pod(1)])
    stale_cm = copy.deepcopy(obs.configmap)
    stale_cm["data"]["job.yaml"] = "old"
    p = plan(j, Observed(pods=obs.pods, service=obs.service, configmap=stale_cm, now=NOW))
    assert len(p.update) == 1
    assert p.update[0]["data"] == obs.configmap["data"]


def test_an_invalid_spec_with_a_nonsense_ttl_still_plans_a_number():
    """An object that bypassed the CRD: the raw TTL is not trusted for the requeue arithmetic."""
    p = plan(*(lambda j: (j, observe(j)))(job(training={"batchSize": 0}, runPolicy={"ttlSecondsAfterFinished": "1h"})))
    assert p.status["reason"] == "InvalidSpec"
    assert p.requeue_after is None
    assert not p.delete_job


# ---- step: suspend -------------------------------------------------------------------------------


def test_suspend_deletes_pods_and_resume_recreates_them():
    j = _running_job()
    j["spec"]["runPolicy"]["suspend"] = True
    p, j = run(j, [pod(0), pod(1)])
    assert j["status"]["phase"] == "Suspended"
    assert sorted(d.name for d in p.delete) == ["j-node-0", "j-node-1"]
    assert "startTime" not in j["status"]
    assert not any(o["kind"] == "Pod" for o in p.create)
    assert next(c for c in j["status"]["conditions"] if c["type"] == "Running")["status"] == "False"
    p2, j = run(j, [])
    assert p2.status is None
    assert p2.empty
    j["spec"]["runPolicy"]["suspend"] = False
    p, j = run(j, [], now=NOW + timedelta(seconds=5))
    assert j["status"]["phase"] == "Created"
    assert j["status"]["reason"] == "Resumed"
    assert names(p.create) == ["j-node-0", "j-node-1"]
    assert j["status"]["startTime"] == rfc3339(NOW + timedelta(seconds=5))
    assert next(c for c in j["status"]["conditions"] if c["type"] == "Suspended")["status"] == "False"
    assert j["status"]["restartCount"] == 0


def test_resuming_while_the_suspended_pods_terminate_is_not_a_disruption():
    """issue #18 (7): the suspended pods still terminating when suspend goes false are the
    suspension's, not a disruption (disruptionLimit=0 would fail the job)."""
    j = _running_job(disruptionLimit=0)
    j["spec"]["runPolicy"]["suspend"] = True
    _, j = run(j, [pod(0), pod(1)])
    j["spec"]["runPolicy"]["suspend"] = False
    terminating = [pod(0, deleting=True), pod(1, deleting=True)]
    p, j = run(j, terminating, now=NOW + timedelta(seconds=2))
    assert j["status"]["phase"] == "Suspended"
    assert "waiting for 2 pod(s)" in j["status"]["message"]
    assert not p.create
    assert j["status"]["restartCount"] == 0
    assert not j["status"].get("disruptedAttempts")
    assert p.requeue_after is not None  # back to check the terminating pods' node
    p, j = run(j, [], now=NOW + timedelta(seconds=20))
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Created", "Resumed")
    assert names(p.create) == ["j-node-0", "j-node-1"]
    assert j["status"]["restartCount"] == 0


def test_a_suspend_seen_after_node0_succeeded_keeps_the_success():
    """issue #18 (7): the run is over; a late suspend must not delete node 0 and lose the success."""
    j = _running_job()
    j["spec"]["runPolicy"]["suspend"] = True
    p, j = run(j, [pod(0, "Succeeded", exit_code=0), pod(1)])
    assert j["status"]["phase"] == "Succeeded"
    assert [d.name for d in p.delete] == ["j-node-1"]


# ---- step: deadline ------------------------------------------------------------------------------


def test_active_deadline():
    j = _running_job(activeDeadlineSeconds=100)
    p = plan(j, observe(j, [pod(0), pod(1)], now=NOW + timedelta(seconds=40)))
    assert p.requeue_after == pytest.approx(60)
    assert p.status is None
    p, j = run(j, [pod(0), pod(1)], now=NOW + timedelta(seconds=100))
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", "DeadlineExceeded")
    assert sorted(d.name for d in p.delete) == ["j-node-0", "j-node-1"]


# ---- step: success -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "deleted"), [("Running", ["j-node-1"]), ("All", ["j-node-0", "j-node-1"]), ("None", [])]
)
def test_node0_success_and_clean_pod_policy(policy, deleted):
    j = _running_job(cleanPodPolicy=policy)
    p, j = run(j, [pod(0, "Succeeded", exit_code=0), pod(1)])
    assert j["status"]["phase"] == "Succeeded"
    assert j["status"]["completionTime"] == rfc3339(NOW)
    assert sorted(d.name for d in p.delete) == deleted
    assert p.transition == "Succeeded"
    assert p.events[0].reason == "Succeeded"


# ---- step: failure_policy (pods classified, the attempt judged, the limits) ----------------------


@pytest.mark.parametrize(
    ("bad_pod", "retryable", "reason"),
    [
        (pod(1, "Failed", exit_code=137, reason="OOMKilled"), True, "OOMKilled"),
        (pod(1, "Failed", exit_code=143), True, "Killed"),
        (pod(1, "Failed", exit_code=128), True, "Killed"),
        (pod(1, "Failed", pod_reason="Evicted"), True, "Evicted"),
        (
            pod(
                1,
                "Failed",
                exit_code=1,
                conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}],
            ),
            True,
            "PreemptionByScheduler",
        ),
        (
            pod(
                1,
                "Running",
                conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}],
            ),
            True,
            "DeletionByTaintManager",
        ),
        (pod(1, "Unknown"), True, "NodeLost"),
        (pod(1, "Running", deleting=True), True, "PodDeleted"),
        (pod(1, "Failed", exit_code=2, message="spec.training.batchSize: bad"), False, "InvalidConfig"),
        (pod(1, "Failed", exit_code=3, message="train.csv: 3 images missing"), False, "PreflightFailed"),
        (pod(1, "Failed", exit_code=4, message="loss is nan at step 12"), False, "NonFiniteLoss"),
        (pod(1, "Failed", exit_code=5, message="spec.training.batchSize changed"), False, "CheckpointMismatch"),
        (pod(1, "Failed", exit_code=6, message="rendezvous: node 0 not reachable"), True, "RendezvousTimeout"),
        (pod(1, "Failed", exit_code=1), True, "TrainerFailed"),
        (pod(1, "Failed", exit_code=127), True, "TrainerFailed"),
    ],
)
def test_classify(bad_pod, retryable, reason):
    f = classify(bad_pod)
    assert f is not None
    assert (f.retryable, f.reason) == (retryable, reason)


def test_a_signal_is_named_in_the_message():
    f = classify(pod(1, "Failed", exit_code=139, message="rank 1 (local 1) died"))
    assert f.retryable
    assert not f.disruption
    assert "SIGSEGV" in f.message
    assert "rank 1 (local 1) died" in f.message


def test_healthy_pods_are_not_failures():
    assert classify(pod(0)) is None
    assert classify(pod(0, "Pending")) is None
    assert classify(pod(0, "Succeeded", exit_code=0)) is None


def test_non_retryable_exit_fails_with_the_termination_message():
    j = _running_job()
    p, j = run(j, [pod(0), pod(1, "Failed", exit_code=3, message="train.csv: column 'caption' missing")])
    assert j["status"]["phase"] == "Failed"
    assert j["status"]["reason"] == "PreflightFailed"
    assert "column 'caption' missing" in j["status"]["message"]
    failed = next(c for c in j["status"]["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True"
    assert "column 'caption' missing" in failed["message"]
    # cleanPodPolicy Running (default): the running node 0 is deleted, the failed pod kept for logs.
    assert p.delete == (Delete("Pod", "j-node-0", "pod-0-0"),)
    assert p.events[0].type == "Warning"
    assert j["status"]["completionTime"] == rfc3339(NOW)


def test_backoff_limit_is_honoured_exactly():
    """backoffLimit=2: failures 1 and 2 restart, failure 3 fails; restartCount never exceeds 2."""
    j = _running_job(backoff=2)
    for attempt in (0, 1):
        p, j = run(j, [pod(0, attempt=attempt), pod(1, "Failed", attempt, exit_code=137, reason="OOMKilled")])
        assert j["status"]["phase"] == "Restarting"
        assert j["status"]["restartCount"] == attempt + 1
        assert j["status"]["failedAttempts"] == attempt + 1
        assert j["status"]["disruptedAttempts"] == 0
        assert sorted(d.name for d in p.delete) == ["j-node-0", "j-node-1"]
        assert not p.create
        # Job-like delay before the next attempt: 10 s, then 20 s; in the status, the event and the requeue.
        delay = 10 * 2**attempt
        assert j["status"]["nextAttemptTime"] == rfc3339(NOW + timedelta(seconds=delay))
        assert p.requeue_after == delay
        assert f"in {delay}s" in p.events[0].message
        assert p.events[0].type == "Warning"
        # The same failed pods seen again (deletion not yet visible): nothing counted twice.
        again, j = run(
            j, [pod(0, attempt=attempt, deleting=True), pod(1, "Failed", attempt, exit_code=137, reason="OOMKilled")]
        )
        assert j["status"]["restartCount"] == attempt + 1
        assert [d.name for d in again.delete] == ["j-node-1"]
        # Old pods gone, but the delay is not over: nothing is created, the pass comes back in time.
        p, j = run(j, [], now=NOW + timedelta(seconds=delay - 4))
        assert not p.create
        assert p.requeue_after == pytest.approx(4)
        # Old pods gone: the next attempt's pods are created with the new attempt label.
        p, j = run(j, [], now=NOW + timedelta(seconds=delay))
        assert names(p.create) == ["j-node-0", "j-node-1"]
        assert "nextAttemptTime" not in j["status"]
        assert {o["metadata"]["labels"][naming.LABEL_ATTEMPT] for o in p.create} == {str(attempt + 1)}
        p, j = run(j, [pod(0, attempt=attempt + 1), pod(1, attempt=attempt + 1)])
        assert j["status"]["phase"] == "Running"
        restarting = next(c for c in j["status"]["conditions"] if c["type"] == "Restarting")
        assert restarting["status"] == "False"
    p, j = run(j, [pod(0, attempt=2), pod(1, "Failed", 2, exit_code=137, reason="OOMKilled")])
    assert j["status"]["phase"] == "Failed"
    assert j["status"]["reason"] == "BackoffLimitExceeded"
    assert j["status"]["restartCount"] == 2


def test_backoff_limit_zero_fails_on_first_failed_attempt():
    j = _running_job(backoff=0)
    _, j = run(j, [pod(0), pod(1, "Failed", exit_code=1, message="RuntimeError: boom")])
    assert (j["status"]["phase"], j["status"]["reason"], j["status"]["restartCount"]) == (
        "Failed",
        "BackoffLimitExceeded",
        0,
    )
    assert "RuntimeError: boom" in j["status"]["message"]


def test_disruptions_have_their_own_cap_and_do_not_use_backoff():
    j = _running_job(backoff=0, disruptionLimit=2)
    for attempt in (0, 1):
        _, j = run(j, [pod(0, attempt=attempt), pod(1, "Failed", attempt, pod_reason="Evicted")])
        assert (j["status"]["phase"], j["status"]["reason"]) == ("Restarting", "Evicted")
        assert j["status"]["disruptedAttempts"] == attempt + 1
        assert j["status"]["failedAttempts"] == 0
    _, j = run(j, [pod(0, attempt=2), pod(1, "Unknown", 2)])
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", "DisruptionLimitExceeded")


def test_count_disruptions_opts_into_backoff_limit():
    j = _running_job(backoff=1, countDisruptions=True)
    _, j = run(j, [pod(0), pod(1, "Failed", pod_reason="Evicted")])
    assert j["status"]["phase"] == "Restarting"
    assert "backoff 1/1" in j["status"]["message"]
    _, j = run(j, [pod(0, attempt=1), pod(1, "Failed", 1, pod_reason="Evicted")])
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", "BackoffLimitExceeded")


def test_restart_delay_doubles_up_to_its_cap():
    from controller.reconcile import restart_delay

    assert [restart_delay(n) for n in range(8)] == [10, 20, 40, 80, 160, 320, 360, 360]
    assert restart_delay(3, 1, 5) == 5
    assert restart_delay(10**6) == 360


@pytest.mark.parametrize(
    ("pods", "reason", "retried"),
    [
        # eviction seen together with the knock-on exit of node 0, either order of nodes
        ([pod(0, "Failed", exit_code=1), pod(1, "Failed", pod_reason="Evicted")], "Evicted", True),
        ([pod(0, "Failed", exit_code=137), pod(1, "Running", deleting=True)], "PodDeleted", True),
        ([pod(0, "Failed", exit_code=3, message="x"), pod(1, "Unknown")], "NodeLost", True),
        # no disruption: the trainer's verdict is final even next to a knock-on exit
        ([pod(0, "Failed", exit_code=1), pod(1, "Failed", exit_code=2, message="spec.x: bad")], "InvalidConfig", False),
        ([pod(0, "Failed", exit_code=4, message="loss is nan"), pod(1)], "NonFiniteLoss", False),
    ],
)
def test_an_attempt_is_judged_from_all_its_failures(pods, reason, retried):
    j = _running_job(backoff=0)
    _, j = run(j, pods)
    assert j["status"]["reason"] == reason
    assert j["status"]["phase"] == ("Restarting" if retried else "Failed")


def test_the_first_failure_of_an_attempt_is_its_cause():
    """node 1 segfaults first; node 0's exit 1 is the knock-on (later finishedAt)."""
    j = _running_job()
    first, later = pod(1, "Failed", exit_code=139), pod(0, "Failed", exit_code=1)
    first["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-01-02T03:04:00Z"
    later["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-01-02T03:04:03Z"
    _, j = run(j, [later, first])
    assert j["status"]["reason"] == "Killed"
    assert "SIGSEGV" in j["status"]["message"]


def test_knock_on_exit_with_an_eviction_in_the_same_attempt_restarts_without_using_backoff():
    """node 1 evicted, node 0's collective breaks (exit 1): the attempt was disrupted, not failed."""
    j = _running_job(backoff=0)
    p, j = run(j, [pod(0, "Failed", exit_code=1), pod(1, "Failed", exit_code=143, conditions=EVICTED)])
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Restarting", "EvictionByEvictionAPI")
    assert j["status"]["restartCount"] == 1
    assert j["status"]["disruptedAttempts"] == 1
    assert j["status"].get("failedAttempts", 0) == 0  # backoffLimit=0 is untouched
    assert sorted(d.name for d in p.delete) == ["j-node-0", "j-node-1"]
    assert not p.create


def test_pod_vanishing_while_running_is_a_restart():
    j = _running_job()
    p, j = run(j, [pod(0)])
    assert j["status"]["phase"] == "Restarting"
    assert j["status"]["reason"] == "PodDeleted"
    assert j["status"]["restartCount"] == 1
    assert [d.name for d in p.delete] == ["j-node-0"]


def test_a_knock_on_exit_waits_for_the_settle_window_before_it_is_judged():
    """issue #18 (8): node 0 exits 1 while node 1 still runs; its eviction may still be on the way.
    The attempt is judged when all pods are terminal or SETTLE_S after the first failure."""
    from controller.reconcile import SETTLE_S

    j = _running_job(backoff=0)
    knock_on = finished_at(pod(0, "Failed", exit_code=1), 5)
    p, j = run(j, [knock_on, pod(1)])
    assert j["status"]["phase"] == "Running"
    assert not p.delete
    assert p.requeue_after == pytest.approx(SETTLE_S - 5)
    # the eviction lands within the window: a disruption, backoffLimit=0 untouched
    _, j2 = run(j, [knock_on, pod(1, "Failed", pod_reason="Evicted")], now=NOW + timedelta(seconds=10))
    assert (j2["status"]["phase"], j2["status"]["reason"]) == ("Restarting", "Evicted")
    # nothing else happens: judged at the end of the window, a failure
    _, j3 = run(j, [knock_on, pod(1)], now=NOW + timedelta(seconds=SETTLE_S - 5))
    assert (j3["status"]["phase"], j3["status"]["reason"]) == ("Failed", "BackoffLimitExceeded")


def test_an_attempt_whose_pods_are_all_terminal_is_judged_at_once():
    j = _running_job(backoff=0)
    pods = [finished_at(pod(0, "Failed", exit_code=1), 1), finished_at(pod(1, "Failed", exit_code=1), 1)]
    _, j = run(j, pods)
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", "BackoffLimitExceeded")


@pytest.mark.parametrize(
    ("node", "disrupted"),
    [
        (None, True),  # the Node object is gone
        (_node("n1", ready="Unknown"), True),  # NotReady: enough to explain a peer's knock-on exit
        (_node("n1", taints=[{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]), True),
        (_node("n1"), False),
    ],
)
def test_a_failed_attempt_checks_the_node_of_peers_still_running(node, disrupted):
    """issue #18 (8): node 1's pod still says Running, but its node is lost: node 0's exit 1 is the
    knock-on of a disruption, not a failure (backoffLimit=0 would end the job)."""
    j = _running_job(backoff=0)
    pods = [finished_at(pod(0, "Failed", exit_code=1), 120), on_node(pod(1), "n1")]
    _, j = run(j, pods, nodes={"n1": node})
    if disrupted:
        assert (j["status"]["phase"], j["status"]["reason"]) == ("Restarting", "NodeLost")
        assert j["status"]["disruptedAttempts"] == 1
        assert j["status"].get("failedAttempts", 0) == 0
    else:
        assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", "BackoffLimitExceeded")


def test_an_oom_kill_is_the_cause_on_a_finished_at_tie():
    """issue #18 (8): finishedAt has one-second resolution; on a tie the OOM kill is the root cause."""
    j = _running_job()
    pods = [
        finished_at(pod(0, "Failed", exit_code=1), 3),
        finished_at(pod(1, "Failed", exit_code=137, reason="OOMKilled"), 3),
    ]
    _, j = run(j, pods)
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Restarting", "OOMKilled")


# ---- step: start_deadline (waiting pods, refused creates, runPolicy.startDeadlineSeconds) ----------


@pytest.mark.parametrize(
    ("held", "reason"),
    [
        (waiting_pod(1, "ImagePullBackOff", 'Back-off pulling image "nope:1"'), "ImagePullBackOff"),
        (waiting_pod(1, "ErrImagePull", "rpc error: not found"), "ErrImagePull"),
        (waiting_pod(1, "CreateContainerConfigError", 'secret "s" not found'), "CreateContainerConfigError"),
        (unschedulable_pod(1), "Unschedulable"),
    ],
)
def test_a_waiting_pod_shows_its_reason_and_fails_the_job_at_the_start_deadline(held, reason):
    """issue #18 (5): the reason is on the job (condition + one Warning event), it is no failure,
    and runPolicy.startDeadlineSeconds ends the job with it without using backoffLimit."""
    _, j = run(job(runPolicy={"startDeadlineSeconds": 120}), [])
    assert j["status"]["attemptStartTime"] == rfc3339(NOW)
    p, j = run(j, [pod(0), held], now=NOW + timedelta(seconds=20))
    cond = condition(j, "PodsWaiting")
    assert cond["status"] == "True"
    assert cond["reason"] == reason
    assert "j-node-1" in cond["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Warning", reason)]
    assert j["status"]["phase"] == "Created"
    assert p.requeue_after == pytest.approx(100)
    again, j = run(j, [pod(0), held], now=NOW + timedelta(seconds=60))
    assert not again.events  # one event per cause, not per pass
    p, j = run(j, [pod(0), held], now=NOW + timedelta(seconds=120))
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", reason)
    assert "startDeadlineSeconds=120" in j["status"]["message"]
    assert "j-node-1" in j["status"]["message"]
    assert j["status"]["restartCount"] == 0
    assert not j["status"].get("failedAttempts")


def test_a_waiting_cause_clears_once_the_pods_run():
    _, j = run(job(), [])
    _, j = run(j, [pod(0), waiting_pod(1, "ImagePullBackOff")])
    p, j = run(j, [pod(0), pod(1)])
    assert j["status"]["phase"] == "Running"
    assert condition(j, "PodsWaiting")["status"] == "False"
    assert [e.reason for e in p.events] == ["Running"]


def test_an_invalid_image_name_fails_as_invalid_spec_at_once():
    _, j = run(job(), [])
    _, j = run(j, [pod(0), waiting_pod(1, "InvalidImageName", 'Failed to apply default image tag "Bad:Tag"')])
    assert (j["status"]["phase"], j["status"]["reason"]) == ("Failed", "InvalidSpec")
    assert "Bad:Tag" in j["status"]["message"]
    assert not j["status"].get("failedAttempts")


def test_a_refused_pod_create_is_shown_on_the_job_and_a_422_is_invalid_spec():
    from controller.reconcile import CreateError

    _, j = run(job(), [])
    quota = CreateError("Pod", "j-node-1", 403, '403 Forbidden: pods "j-node-1" is forbidden: exceeded quota: q')
    p = plan(j, Observed(pods=(pod(0),), now=NOW, create_error=quota, **children(j)))
    cond = next(c for c in p.status["conditions"] if c["type"] == "PodsWaiting")
    assert (cond["status"], cond["reason"]) == ("True", "PodCreateFailed")
    assert "exceeded quota" in cond["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "PodCreateFailed")]
    assert names(p.create) == ["j-node-1"]  # tried again (the worker backs off)
    # the pod exists by now: an old refusal is not shown
    assert plan(j, Observed(pods=(pod(0), pod(1, "Pending")), now=NOW, create_error=quota, **children(j))).events == ()
    invalid = CreateError("Pod", "j-node-1", 422, '422 Unprocessable Entity: Pod "j-node-1" is invalid')
    p = plan(j, Observed(pods=(pod(0),), now=NOW, create_error=invalid, **children(j)))
    assert (p.status["phase"], p.status["reason"]) == ("Failed", "InvalidSpec")
    assert "is invalid" in p.status["message"]


def test_start_deadline_default_and_null():
    from kubeclip.api import RunPolicy

    assert RunPolicy().startDeadlineSeconds == 600
    _, j = run(job(runPolicy={"startDeadlineSeconds": None}), [])
    p, j = run(j, [pod(0), unschedulable_pod(1)], now=NOW + timedelta(days=2))
    assert j["status"]["phase"] == "Created"
    assert p.requeue_after is None


# ---- step: start_pods (create what is missing, Running, progress, stuck deletions) ---------------


def test_new_job_creates_configmap_service_and_all_pods():
    j = job()
    p = plan(j, observe(j, with_children=False))
    assert [o["kind"] for o in p.create] == ["ConfigMap", "Service", "Pod", "Pod"]
    assert names(p.create) == ["j", "j-config", "j-node-0", "j-node-1"]
    assert p.status["phase"] == "Created"
    assert p.status["startTime"] == rfc3339(NOW)
    assert p.status["restartCount"] == 0
    assert p.status["observedGeneration"] == 1
    assert [c["type"] for c in p.status["conditions"]] == ["Created"]
    assert p.transition == "Created"
    assert [e.reason for e in p.events] == ["Created"]


def test_unchanged_world_plans_nothing():
    j = job()
    _, j = run(j, [])
    p, j = run(j, [pod(0), pod(1)])
    assert p.status["phase"] == "Running"
    again = plan(j, observe(j, [pod(0), pod(1)]))
    assert again.empty
    assert again.status is None


def test_pending_pods_keep_created_and_running_when_all_run():
    _, j = run(job(), [])
    p, j = run(j, [pod(0), pod(1, "Pending")])
    assert p.status is None or p.status["phase"] == "Created"
    assert j["status"]["nodes"]["pending"] == 1
    assert j["status"]["nodes"]["running"] == 1
    p, j = run(j, [pod(0), pod(1)])
    assert j["status"]["phase"] == "Running"
    assert [e.reason for e in p.events] == ["Running"]
    running = next(c for c in j["status"]["conditions"] if c["type"] == "Running")
    assert running["status"] == "True"
    assert running["observedGeneration"] == 1


def test_missing_pod_before_running_is_just_created():
    _, j = run(job(), [])
    p = plan(j, observe(j, [pod(0, "Pending")]))
    assert names(p.create) == ["j-node-1"]
    assert not p.delete
    assert j["status"]["restartCount"] == 0


def test_stale_pods_of_an_older_attempt_are_deleted_never_counted():
    j = _running_job()
    j["status"]["restartCount"] = 1
    j["status"]["phase"] = "Restarting"
    p = plan(j, observe(j, [pod(0, "Failed", 0, exit_code=137), pod(1, "Running", 1)]))
    assert [d.name for d in p.delete] == ["j-node-0"]
    assert not p.create
    assert p.status is None or p.status["restartCount"] == 1


def test_foreign_pods_are_ignored():
    _, j = run(job(), [])
    p = plan(j, observe(j, [pod(0, "Failed", exit_code=1, owner="someone-else")]))
    assert p.status is None or p.status["phase"] == "Created"
    assert not p.delete
    assert names(p.create) == ["j-node-1"]  # node 0's name is taken: wait for it to go


def test_progress_lands_in_status_only_when_it_changes():
    j = _running_job()
    prog = {
        "phase": "training",
        "epoch": 1,
        "epochs": 3,
        "step": 50,
        "totalSteps": 300,
        "loss": 1.23456,
        "samplesPerSecond": 812.34,
        "etaSeconds": 120.7,
        "eval": {"image_to_text_R@1": 0.41234},
        "lastCheckpoint": {"path": "/out/checkpoints/step-50", "step": 50, "time": 1.0},
        "updatedAt": 1767323045.0,
    }
    p, j = run(j, [pod(0), pod(1)], progress=prog)
    pr = j["status"]["progress"]
    assert pr["summary"] == "epoch 1/3 step 50/300"
    assert pr["percent"] == 16
    assert pr["loss"] == 1.2346
    assert pr["recallAt1"] == 0.4123
    assert pr["etaSeconds"] == 120
    assert pr["lastCheckpoint"] == "/out/checkpoints/step-50"
    assert not p.events  # progress is not a transition
    assert plan(j, observe(j, [pod(0), pod(1)], progress=prog)).status is None


def test_a_checkpoint_fallback_reported_by_the_trainer_becomes_one_warning_event():
    j = _running_job()
    prog = {
        "phase": "training",
        "step": 20,
        "totalSteps": 100,
        "skippedCheckpoints": ["step-00000030.pt: truncated file"],
    }
    p, j = run(j, [pod(0), pod(1)], progress=prog)
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "CheckpointFallback")]
    assert "step-00000030.pt: truncated file" in p.events[0].message
    assert j["status"]["progress"]["skippedCheckpoints"] == ["step-00000030.pt: truncated file"]
    again = plan(j, observe(j, [pod(0), pod(1)], progress={**prog, "step": 21}))
    assert not again.events  # posted once, not on every progress poll


@pytest.mark.parametrize(
    ("node", "forced"),
    [
        (None, True),  # the Node object is gone
        (_node("n1", taints=[{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]), True),
        # NotReady, however long, is not gone: its kubelet may still run the pod (issue #18, 1)
        (_node("n1", ready="Unknown", since=NOW - timedelta(hours=2)), False),
        (_node("n1", ready="False", since=NOW - timedelta(seconds=301)), False),
        (_node("n1"), False),  # a Ready node's kubelet will finish the deletion
    ],
)
def test_pod_stuck_in_deletion_is_force_deleted_only_when_its_node_is_gone(node, forced):
    """A stale pod whose deletion never completes must not block the next attempt, but a partitioned
    kubelet may still run it: force only when the node is known gone, never on a timer alone."""
    j = _running_job()
    j["status"]["restartCount"], j["status"]["phase"] = 1, "Restarting"
    stuck = pod(1, "Running", 0, deleting=True)
    stuck["spec"] = {"nodeName": "n1"}
    stuck["metadata"]["deletionTimestamp"] = rfc3339(NOW - timedelta(seconds=5))
    p = plan(j, Observed(pods=(stuck,), now=NOW, nodes={"n1": node}, **children(j)))
    assert not p.delete
    assert names(p.create) == ["j-node-0"]
    assert p.requeue_after == pytest.approx(26)  # back when the grace is over
    stuck["metadata"]["deletionTimestamp"] = rfc3339(NOW - timedelta(seconds=31))
    p = plan(j, Observed(pods=(stuck,), now=NOW, nodes={"n1": node}, **children(j)))
    assert p.delete == ((Delete("Pod", "j-node-1", "pod-1-0", force=True),) if forced else ())
    assert p.requeue_after == pytest.approx(30)  # node state changes trigger nothing: look again
    # A timer alone never forces: without the node's state nothing is force-deleted.
    assert not plan(j, Observed(pods=(stuck,), now=NOW + timedelta(hours=1), **children(j))).delete
    # A pod bound to no node has no kubelet that could run it: forced once the grace is over.
    del stuck["spec"]["nodeName"]
    assert plan(j, Observed(pods=(stuck,), now=NOW, **children(j))).delete == (
        Delete("Pod", "j-node-1", "pod-1-0", force=True),
    )


def test_pods_carry_the_hash_of_the_config_they_were_created_against():
    from controller.builders import config_hash

    j = job()
    pods = [o for o in plan(j, observe(j, with_children=False)).create if o["kind"] == "Pod"]
    assert {o["metadata"]["annotations"][naming.ANNOTATION_CONFIG_HASH] for o in pods} == {config_hash(j)}
    assert config_hash(job(training={"epochs": 2})) != config_hash(j)
    assert config_hash(job(image="other:2")) == config_hash(j)  # only what the trainer reads


def test_configmap_drift_and_pod_creates_in_one_pass_update_the_configmap_first():
    """issue #18 (10): unsuspending with a changed trainer spec creates pods in the same pass as the
    ConfigMap update; the plan's order puts the update first (the worker applies it first)."""
    from controller.reconcile import Plan

    j = _running_job()
    j["spec"]["runPolicy"]["suspend"] = True
    _, j = run(j, [pod(0), pod(1)])
    old_cm = children(j)["configmap"]
    j["spec"]["runPolicy"]["suspend"] = False
    j["spec"]["training"] = {"epochs": 3}
    p = plan(j, Observed(pods=(), now=NOW, configmap=old_cm, service=children(j)["service"]))
    assert len(p.update) == 1
    assert "epochs: 3" in p.update[0]["data"]["job.yaml"]
    assert names(p.create) == ["j-node-0", "j-node-1"]
    assert "updates, creates" in Plan.__doc__


# ---- the step sequence ---------------------------------------------------------------------------


def test_the_policies_decide_in_a_fixed_order_and_a_step_can_be_inserted():
    from controller.reconcile import STEPS, Pass

    assert [s.__name__ for s in STEPS] == [
        "finished",
        "invalid_spec",
        "queue_admission",
        "suspend",
        "deadline",
        "success",
        "failure_policy",
        "start_deadline",
        "start_pods",
    ]

    def hold(p: Pass):  # e.g. a queue that has not admitted the job: no pods, a reason
        return p.plan()

    steps = [*STEPS[:2], hold, *STEPS[2:]]
    j = job()
    p = plan(j, observe(j, with_children=False), steps=steps)
    assert [o["kind"] for o in p.create] == ["ConfigMap", "Service"]  # children of a valid spec, no pods
    assert plan(job(training={"batchSize": 0}), observe(j), steps=steps).status["reason"] == "InvalidSpec"
