"""The controller on the real kube-apiserver, running as its ServiceAccount with the chart's rules.

There is no kubelet: the tests play it by writing pod status (phase, exit codes, OOMKilled) and
serve node 0's /progress from this process (the controller is pointed at 127.0.0.1 by
KUBECLIP_PROGRESS_HOST/PORT, the one test-only setting). Everything else is real: kubectl apply,
the CRD's schema and CEL rules, Pod Security admission, RBAC, owner references and the garbage
collector.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid

import pytest
import yaml
from controller_harness import controller_kubeconfig, set_pod_status

from devkit.jobs import cluster_job
from devkit.operator import Operator, install_crd
from devkit.paths import REPO
from devkit.wait import wait_for
from kubeclip.api import parse_manifest

pytestmark = [pytest.mark.cluster]

GROUP, VERSION, PLURAL = "kubeclip.dev", "v1alpha1", "finetunejobs"
PROGRESS: dict = {}


class _ProgressHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(PROGRESS).encode()
        self.send_response(200 if self.path == "/progress" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def progress_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ProgressHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def system_ns(cluster):
    name = f"kubeclip-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def crd(cluster):
    created = install_crd(cluster.kubectl)
    yield
    if created:
        cluster.kubectl("delete", "crd", "finetunejobs.kubeclip.dev", "--wait=false", check=False)


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster, system_ns, tmp_path_factory):
    return controller_kubeconfig(cluster, system_ns, tmp_path_factory.mktemp("ctl") / "kubeconfig")


TEST_ENV = {
    "KUBECLIP_PROGRESS_HOST": "127.0.0.1",
    "KUBECLIP_PROGRESS_INTERVAL_SECONDS": "1",
    "KUBECLIP_LEASE_DURATION_SECONDS": "4",
    "KUBECLIP_RENEW_DEADLINE_SECONDS": "3",
    "KUBECLIP_RETRY_PERIOD_SECONDS": "0.5",
    "KUBECLIP_RESTART_DELAY_SECONDS": "1",  # the Job-like 10 s -> 6 min delay, shortened
    "KUBECLIP_RESTART_DELAY_CAP_SECONDS": "2",
}


@pytest.fixture(scope="module")
def operator(crd, sa_kubeconfig, system_ns, progress_server, tmp_path_factory):
    log = tmp_path_factory.mktemp("ctl-log") / "controller.log"
    op = Operator(
        sa_kubeconfig,
        log,
        "--all-namespaces",
        f"--lease-namespace={system_ns}",
        env={**TEST_ENV, "KUBECLIP_PROGRESS_PORT": str(progress_server)},
    ).start()
    op.wait_ready()
    yield op
    rc = op.stop()
    assert rc == 0, f"controller exited {rc} on SIGTERM:\n{op.log_tail()}"
    # The controller's own loggers (kopf's may log a retried 429 while the CRD initialises).
    errors = [line for line in log.read_text().splitlines() if '"level": "ERROR", "logger": "controller' in line]
    assert not errors, "controller logged errors:\n" + "\n".join(errors[:5])


@pytest.fixture
def api(cluster):
    from kubernetes import client

    with cluster.api_client() as a:
        yield client.CoreV1Api(a), client.CustomObjectsApi(a)


def _apply(cluster, doc, check=True):
    return cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=check)


def _job(custom, ns, name):
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _status(custom, ns, name):
    return _job(custom, ns, name).get("status") or {}


def _pods(core, ns, job):
    return sorted(
        core.list_namespaced_pod(ns, label_selector=f"kubeclip.dev/job-name={job}").items, key=lambda p: p.metadata.name
    )


def _wait_phase(custom, ns, name, phase, timeout=30):
    return wait_for(
        lambda: _status(custom, ns, name).get("phase") == phase and _status(custom, ns, name),
        timeout,
        f"{name} phase {phase} (now {_status(custom, ns, name).get('phase')})",
    )


def _wait_pods(core, ns, job, n, attempt=None, timeout=30):
    def ok():
        pods = [p for p in _pods(core, ns, job) if p.metadata.deletion_timestamp is None]
        if attempt is not None:
            pods = [p for p in pods if p.metadata.labels.get("kubeclip.dev/attempt") == str(attempt)]
        return len(pods) == n and pods

    return wait_for(ok, timeout, f"{n} pods of {job}")


def _run_all(core, ns, job):
    for p in _pods(core, ns, job):
        set_pod_status(core, ns, p.metadata.name, "Running")


def _events(core, ns, name):
    return [
        e.reason
        for e in sorted(
            core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items,
            key=lambda e: e.metadata.creation_timestamp,
        )
    ]


# ------------------------------------------------------------------------------------------------


def test_example_job_gets_configmap_service_and_restricted_pods(cluster, operator, namespace, api):
    core, custom = api
    # Pod Security admission enforces "restricted": the pods below only exist if they comply.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    doc = yaml.safe_load((REPO / "examples/finetune-minimal.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["numNodes"], doc["spec"]["numProcPerNode"] = 3, 2
    for kind in ("requests", "limits"):
        doc["spec"]["resources"][kind]["nvidia.com/gpu"] = 2
    _apply(cluster, doc)
    name = doc["metadata"]["name"]
    job = _job(custom, namespace, name)
    pods = _wait_pods(core, namespace, name, 3)

    cm = core.read_namespaced_config_map(f"{name}-config", namespace)
    manifest = yaml.safe_load(cm.data["job.yaml"])
    job_name, spec = parse_manifest(manifest)
    assert job_name == name
    assert spec.numNodes == 3
    assert spec.training.batchSize == 128
    assert not {"image", "volumes", "resources"} & set(manifest["spec"])

    svc = core.read_namespaced_service(name, namespace)
    assert svc.spec.cluster_ip == "None"
    assert svc.spec.selector == {"kubeclip.dev/job-name": name}

    for i, p in enumerate(pods):
        assert p.metadata.name == f"{name}-node-{i}"
        assert p.metadata.labels["kubeclip.dev/node-index"] == str(i)
        (ref,) = p.metadata.owner_references
        assert (ref.kind, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == (
            "FineTuneJob",
            name,
            job["metadata"]["uid"],
            True,
            True,
        )
        c = p.spec.containers[0]
        env = {e.name: e.value for e in c.env}
        assert env["RANK"] == env["NODE_RANK"] == env["PET_NODE_RANK"] == str(i)
        assert env["WORLD_SIZE"] == "6"
        assert env["PET_NPROC_PER_NODE"] == "2"
        assert env["PET_NNODES"] == "3"
        assert env["MASTER_ADDR"] == f"{name}-node-0.{name}.{namespace}.svc"
        assert env["MASTER_PORT"] == "23456"
        assert c.command == ["python", "-m", "trainer.node", "/etc/kubeclip/job.yaml"]
        assert c.security_context.allow_privilege_escalation is False
        assert c.security_context.capabilities.drop == ["ALL"]
        assert p.spec.security_context.run_as_non_root
        assert p.spec.security_context.seccomp_profile.type == "RuntimeDefault"
        assert c.resources.limits["nvidia.com/gpu"] == "2"
        assert p.spec.hostname == p.metadata.name
        assert p.spec.subdomain == name
        assert p.spec.restart_policy == "Never"

    st = _wait_phase(custom, namespace, name, "Created")
    assert st["nodes"]["total"] == 3
    assert st["restartCount"] == 0
    assert st["observedGeneration"] == 1
    (cond,) = st["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Created", "True", "Created")
    assert cond["lastTransitionTime"]
    # kopf keeps no state on the object: no finalizers, no annotations of its own.
    meta = _job(custom, namespace, name)["metadata"]
    assert not meta.get("finalizers")
    assert not any("kopf" in k for k in (meta.get("annotations") or {}))
    out = cluster.kubectl("get", "ftj", "-n", namespace).stdout
    assert out.split()[:6] == ["NAME", "PHASE", "NODES", "PROGRESS", "LOSS", "R@1"]
    assert "Created" in out
    assert wait_for(lambda: "Created" in _events(core, namespace, name), 10, "Created event")


def test_running_progress_success_and_clean_pod_policy(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("ok", namespace))
    _wait_pods(core, namespace, "ok", 2)
    PROGRESS.clear()
    PROGRESS.update(
        {
            "phase": "training",
            "epoch": 1,
            "epochs": 2,
            "step": 30,
            "totalSteps": 100,
            "loss": 2.5,
            "samplesPerSecond": 40.0,
            "eval": {"image_to_text_R@1": 0.25},
            "updatedAt": 1767225600.0,
            "lastCheckpoint": {"path": "/data/out/checkpoints/step-30", "step": 30, "time": 1.0},
        }
    )
    _run_all(core, namespace, "ok")
    _wait_phase(custom, namespace, "ok", "Running")
    st = wait_for(
        lambda: (
            (_status(custom, namespace, "ok").get("progress") or {}).get("step") == 30
            and _status(custom, namespace, "ok")
        ),
        15,
        "progress in status",
    )
    assert st["progress"]["summary"] == "epoch 1/2 step 30/100"
    assert st["progress"]["recallAt1"] == 0.25
    assert st["nodes"]["running"] == 2
    out = cluster.kubectl("get", "ftj", "ok", "-n", namespace).stdout
    assert "epoch 1/2 step 30/100" in out
    assert "2.5" in out
    assert "0.25" in out
    set_pod_status(core, namespace, "ok-node-0", "Succeeded", exit_code=0)
    st = _wait_phase(custom, namespace, "ok", "Succeeded")
    assert st["completionTime"]
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in st["conditions"])
    # cleanPodPolicy Running: node 1 (still running) is deleted, node 0 (done) stays for its logs.
    wait_for(lambda: [p.metadata.name for p in _pods(core, namespace, "ok")] == ["ok-node-0"], 15, "node 1 cleaned up")
    assert wait_for(lambda: {"Created", "Running", "Succeeded"} <= set(_events(core, namespace, "ok")), 10, "events")
    assert operator.metric("kubeclip_controller_jobs_succeeded_total") >= 1


def test_a_short_run_ends_with_the_final_progress_from_node0_termination_message(cluster, operator, namespace, api):
    """The last eval lands after the last poll: /progress still serves step 30 and R@1 0.25 when
    node 0 exits; its termination message (docs/contracts.md, "Progress") has the final figures."""
    from kubeclip.api import Progress, termination_message

    core, custom = api
    _apply(cluster, cluster_job("short", namespace))
    _wait_pods(core, namespace, "short", 2)
    PROGRESS.clear()
    PROGRESS.update({"phase": "training", "epoch": 1, "epochs": 2, "step": 30, "totalSteps": 100, "loss": 2.5})
    PROGRESS["eval"] = {"image_to_text_R@1": 0.25}
    _run_all(core, namespace, "short")
    wait_for(lambda: (_status(custom, namespace, "short").get("progress") or {}).get("step") == 30, 15, "polled")
    final = Progress(
        phase="done",
        epoch=1,
        epochs=2,
        step=100,
        totalSteps=100,
        loss=0.75,
        eval={"image_to_text_R@1": 0.5, "text_to_image_R@1": 0.4375},
        baseline={"image_to_text_R@1": 0.125},
        updatedAt=1767225600.0,
    )
    summary = "last weights exported; val i2t R@1 0.500 (start 0.125)"
    set_pod_status(
        core, namespace, "short-node-0", "Succeeded", exit_code=0, message=termination_message(summary, final)
    )
    st = _wait_phase(custom, namespace, "short", "Succeeded")
    assert st["message"] == f"short-node-0 completed: {summary}"
    pr = st["progress"]
    assert (pr["phase"], pr["step"], pr["totalSteps"], pr["percent"]) == ("done", 100, 100, 100), pr
    assert (pr["loss"], pr["recallAt1"], pr["recallAt1Gain"]) == (0.75, 0.5, 0.375), pr
    out = cluster.kubectl("get", "ftj", "short", "-n", namespace).stdout
    assert "epoch 1/2 step 100/100" in out, out
    assert "0.75" in out, out
    assert "0.5" in out, out
    # a finished job keeps it: later passes (resync, the cleanup of node 1) change nothing
    wait_for(lambda: [p.metadata.name for p in _pods(core, namespace, "short")] == ["short-node-0"], 15, "cleanup")
    assert _status(custom, namespace, "short")["progress"] == pr


def test_a_garbage_termination_message_still_succeeds_with_the_polled_progress(cluster, operator, namespace, api):
    from kubeclip.api import FINAL_PROGRESS_MARKER

    core, custom = api
    _apply(cluster, cluster_job("garbage", namespace))
    _wait_pods(core, namespace, "garbage", 2)
    PROGRESS.clear()
    PROGRESS.update({"phase": "training", "epoch": 0, "epochs": 2, "step": 7, "totalSteps": 100})
    _run_all(core, namespace, "garbage")
    wait_for(lambda: (_status(custom, namespace, "garbage").get("progress") or {}).get("step") == 7, 15, "polled")
    message = "done\n" + FINAL_PROGRESS_MARKER + '{"step": 1e400, "phase": "done"'
    set_pod_status(core, namespace, "garbage-node-0", "Succeeded", exit_code=0, message=message)
    st = _wait_phase(custom, namespace, "garbage", "Succeeded")
    assert st["message"] == "garbage-node-0 completed: done", st
    assert st["progress"]["step"] == 7, st


def test_non_retryable_exit_fails_with_termination_message(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("bad-data", namespace))
    _wait_pods(core, namespace, "bad-data", 2)
    _run_all(core, namespace, "bad-data")
    _wait_phase(custom, namespace, "bad-data", "Running")
    set_pod_status(
        core, namespace, "bad-data-node-1", "Failed", exit_code=3, message="train.csv: 12 image files missing"
    )
    st = _wait_phase(custom, namespace, "bad-data", "Failed")
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PreflightFailed"
    assert "12 image files missing" in failed["message"]
    assert st["restartCount"] == 0
    wait_for(
        lambda: [p.metadata.name for p in _pods(core, namespace, "bad-data")] == ["bad-data-node-1"], 15, "cleanup"
    )
    assert "PreflightFailed" in _events(core, namespace, "bad-data")


def test_retryable_failures_restart_until_backoff_limit(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("flaky", namespace, runPolicy={"backoffLimit": 1}))
    first = _wait_pods(core, namespace, "flaky", 2)
    _run_all(core, namespace, "flaky")
    _wait_phase(custom, namespace, "flaky", "Running")
    set_pod_status(core, namespace, "flaky-node-1", "Failed", exit_code=137, reason="OOMKilled")
    second = _wait_pods(core, namespace, "flaky", 2, attempt=1)
    assert {p.metadata.uid for p in second}.isdisjoint({p.metadata.uid for p in first})
    st = _status(custom, namespace, "flaky")
    assert st["restartCount"] == 1
    assert st["phase"] == "Restarting"
    assert st["reason"] == "OOMKilled"
    assert st["failedAttempts"] == 1
    assert st["disruptedAttempts"] == 0
    _run_all(core, namespace, "flaky")
    _wait_phase(custom, namespace, "flaky", "Running")
    set_pod_status(core, namespace, "flaky-node-0", "Failed", exit_code=143)
    st = _wait_phase(custom, namespace, "flaky", "Failed")
    assert st["reason"] == "BackoffLimitExceeded"
    assert st["restartCount"] == 1
    # No third attempt is ever created.
    assert all(p.metadata.labels["kubeclip.dev/attempt"] == "1" for p in _pods(core, namespace, "flaky"))
    assert _events(core, namespace, "flaky").count("OOMKilled") == 1


def test_deleted_pod_is_a_disruption_that_does_not_use_backoff(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("evicted", namespace, runPolicy={"backoffLimit": 0}))
    _wait_pods(core, namespace, "evicted", 2)
    _run_all(core, namespace, "evicted")
    _wait_phase(custom, namespace, "evicted", "Running")
    core.delete_namespaced_pod("evicted-node-1", namespace)
    _wait_pods(core, namespace, "evicted", 2, attempt=1)
    st = _status(custom, namespace, "evicted")
    assert st["restartCount"] == 1
    assert st["reason"] == "PodDeleted"
    assert st["disruptedAttempts"] == 1
    assert st["failedAttempts"] == 0


def test_eviction_with_a_knock_on_exit_in_the_same_attempt_restarts(cluster, operator, namespace, api):
    """node 1 evicted (DisruptionTarget, as the Eviction API writes it) and node 0's broken
    collective (exit 1) seen in one pass: a disrupted attempt, restarted, backoffLimit=0 untouched."""
    core, custom = api
    _apply(cluster, cluster_job("knock", namespace, runPolicy={"backoffLimit": 0}))
    _wait_pods(core, namespace, "knock", 2)
    _run_all(core, namespace, "knock")
    _wait_phase(custom, namespace, "knock", "Running")
    disruption = {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
        "lastTransitionTime": "2026-01-01T00:01:00Z",
    }
    core.patch_namespaced_pod_status("knock-node-1", namespace, {"status": {"conditions": [disruption]}})
    set_pod_status(
        core, namespace, "knock-node-0", "Failed", exit_code=1, message="RuntimeError: Connection closed by peer"
    )
    set_pod_status(core, namespace, "knock-node-1", "Failed", exit_code=143)
    _wait_pods(core, namespace, "knock", 2, attempt=1)
    st = _status(custom, namespace, "knock")
    assert (st["reason"], st["restartCount"], st["disruptedAttempts"], st["failedAttempts"]) == (
        "EvictionByEvictionAPI",
        1,
        1,
        0,
    )


def test_active_deadline(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("slow", namespace, runPolicy={"activeDeadlineSeconds": 3}))
    _wait_pods(core, namespace, "slow", 2)
    _run_all(core, namespace, "slow")
    st = _wait_phase(custom, namespace, "slow", "Failed", timeout=20)
    assert st["reason"] == "DeadlineExceeded"
    wait_for(lambda: not _pods(core, namespace, "slow"), 15, "pods deleted")


def test_suspend_and_resume(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("pause", namespace))
    _wait_pods(core, namespace, "pause", 2)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pause", {"spec": {"runPolicy": {"suspend": True}}}
    )
    st = _wait_phase(custom, namespace, "pause", "Suspended")
    assert any(c["type"] == "Suspended" and c["status"] == "True" for c in st["conditions"])
    wait_for(lambda: not _pods(core, namespace, "pause"), 15, "pods deleted on suspend")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pause", {"spec": {"runPolicy": {"suspend": False}}}
    )
    _wait_pods(core, namespace, "pause", 2)
    st = _wait_phase(custom, namespace, "pause", "Created")
    assert st["reason"] == "Resumed"
    assert st["restartCount"] == 0


def test_ttl_deletes_finished_job_and_children(cluster, operator, namespace, api):
    core, custom = api
    _apply(cluster, cluster_job("brief", namespace, runPolicy={"ttlSecondsAfterFinished": 2, "cleanPodPolicy": "None"}))
    _wait_pods(core, namespace, "brief", 2)
    _run_all(core, namespace, "brief")
    set_pod_status(core, namespace, "brief-node-0", "Succeeded", exit_code=0)
    _wait_phase(custom, namespace, "brief", "Succeeded")
    assert len(_pods(core, namespace, "brief")) == 2  # cleanPodPolicy None keeps them
    wait_for(
        lambda: cluster.kubectl("get", "ftj", "brief", "-n", namespace, check=False).returncode != 0,
        20,
        "job deleted by TTL",
    )
    # The garbage collector follows the owner references.
    wait_for(
        lambda: (
            not _pods(core, namespace, "brief")
            and not core.list_namespaced_config_map(namespace, label_selector="kubeclip.dev/job-name=brief").items
        ),
        60,
        "children garbage-collected",
    )


@pytest.mark.parametrize(
    ("name", "change", "error"),
    [
        ("zero-batch", {"training": {"batchSize": 0}}, "spec.training.batchSize"),
        ("frozen", {"training": {"lockImage": True, "lockText": True}}, "nothing would be trained"),
        (
            "unlocked-unlocked",
            {"training": {"lockImageUnlockedGroups": 2}},
            "lockImageUnlockedGroups is set but lockImage is false",
        ),
        ("dangling-mount", {"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "must name a volume"),
        (
            "gpu-mismatch",
            {"numProcPerNode": 2, "resources": {"limits": {"nvidia.com/gpu": 4}}},
            "must equal numProcPerNode",
        ),
        ("reserved-env", {"env": [{"name": "RANK", "value": "1"}]}, "set by the controller"),
        (
            "reserved-mount",
            {"volumeMounts": [{"name": "data", "mountPath": "/etc/kubeclip"}]},
            "reserved for the job config",
        ),
        ("bad-policy", {"runPolicy": {"cleanPodPolicy": "Sometimes"}}, "cleanPodPolicy"),
        ("typo", {"training": {"batchSzie": 8}}, "batchSzie"),
        ("x" * 54, {}, "at most 53 characters"),
    ],
)
def test_crd_rejects_invalid_specs(cluster, crd, namespace, name, change, error):
    doc = cluster_job(name, namespace, **change)
    if name == "gpu-mismatch":
        doc["spec"]["volumeMounts"] = []
        doc["spec"]["volumes"] = []
    res = _apply(cluster, doc, check=False)
    assert res.returncode != 0, res.stderr
    assert error in res.stderr, res.stderr


def test_good_gpu_spec_and_nullable_fields_are_accepted(cluster, crd, namespace):
    doc = cluster_job(
        "gpus",
        namespace,
        numProcPerNode=4,
        resources={"limits": {"nvidia.com/gpu": 4}, "requests": {"nvidia.com/gpu": "4"}},
    )
    doc["spec"]["dataset"]["valCsv"] = None
    doc["spec"]["imagePullPolicy"] = None
    _apply(cluster, doc)


def test_spec_the_crd_cannot_judge_fails_as_invalid_spec(cluster, operator, namespace, api):
    core, custom = api
    doc = cluster_job("no-image", namespace)
    del doc["spec"]["image"]  # and the controller runs without --default-image
    _apply(cluster, doc)
    st = _wait_phase(custom, namespace, "no-image", "Failed")
    assert st["reason"] == "InvalidSpec"
    assert "spec.image" in st["message"]
    assert not _pods(core, namespace, "no-image")
    assert operator.proc.poll() is None


def test_kubectl_explain_is_useful(cluster, crd):
    out = cluster.kubectl("explain", "ftj.spec.runPolicy.backoffLimit").stdout
    assert "BackoffLimitExceeded" in out
    assert "OpenCLIP model name" in cluster.kubectl("explain", "finetunejob.spec.model.name").stdout


def test_metrics_and_health(operator):
    assert operator.get("/healthz")[0] == 200
    assert operator.get("/readyz")[0] == 200
    text = operator.metrics()
    for name in (
        "kubeclip_controller_jobs_created_total",
        "kubeclip_controller_jobs_succeeded_total",
        "kubeclip_controller_jobs_failed_total",
        "kubeclip_controller_jobs_restarted_total",
        "kubeclip_controller_reconcile_duration_seconds_bucket",
        "kubeclip_controller_reconcile_errors_total",
        "kubeclip_controller_jobs{",
    ):
        assert name in text, name
    assert operator.metric("kubeclip_controller_jobs_created_total") >= 1
    assert operator.metric("kubeclip_controller_reconcile_duration_seconds_count") >= 1
    assert operator.metric("kubeclip_controller_leader") == 1


def test_creating_in_a_deleted_namespace_is_terminating_not_an_error(cluster):
    """A pass that read a job just before its namespace was deleted creates into a namespace that no
    longer exists: the API server answers 404 about the namespace. That is the same situation as a
    terminating namespace (the job is left to the garbage collector), not a reconcile error that
    is retried and logged at ERROR (seen as a flake at test teardown)."""
    from controller.kube import Kube, Terminating

    kube = Kube(cluster.api_client())
    gone = f"gone-{uuid.uuid4().hex[:8]}"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": gone}, "data": {}}
    with pytest.raises(Terminating, match="not found"):
        kube.create(cm)


# ---- issue #18: nothing hangs without a reason; the ConfigMap before the pods --------------------


def _condition(custom, ns, name, type_):
    return next((c for c in _status(custom, ns, name).get("conditions") or [] if c["type"] == type_), None)


def _warnings(core, ns, name):
    events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return {(e.reason, e.message) for e in events if e.type == "Warning"}


def test_a_pod_create_refused_by_pod_security_shows_on_the_job_until_it_is_allowed(cluster, operator, namespace, api):
    """A 403 on pod create (here Pod Security admission refusing a hostPath volume) is a condition
    and a Warning event on the job, not only a log line; once the namespace allows the pods, they
    are created."""
    core, custom = api
    enforce = "pod-security.kubernetes.io/enforce"
    cluster.kubectl("label", "namespace", namespace, f"{enforce}=baseline")
    host = [{"name": "data", "hostPath": {"path": "/var/tmp/kubeclip-data"}}]
    _apply(cluster, cluster_job("psa", namespace, volumes=host))
    cond = wait_for(
        lambda: (c := _condition(custom, namespace, "psa", "PodsWaiting")) and c["status"] == "True" and c,
        30,
        "PodsWaiting on a refused create",
    )
    assert cond["reason"] == "PodCreateFailed"
    assert "403" in cond["message"]
    assert "PodSecurity" in cond["message"]
    assert any(r == "PodCreateFailed" and "hostPath" in m for r, m in _warnings(core, namespace, "psa"))
    st = _status(custom, namespace, "psa")
    assert st["phase"] == "Created"
    assert st["restartCount"] == 0
    assert not _pods(core, namespace, "psa")
    cluster.kubectl("label", "namespace", namespace, f"{enforce}-")
    _wait_pods(core, namespace, "psa", 2, timeout=60)
    _run_all(core, namespace, "psa")
    _wait_phase(custom, namespace, "psa", "Running")
    assert _condition(custom, namespace, "psa", "PodsWaiting")["status"] == "False"


def test_a_pod_the_api_server_finds_invalid_fails_the_job_as_invalid_spec(cluster, operator, namespace, api):
    """requests above limits pass the CRD but the API server refuses the pod (422): no retry loop."""
    core, custom = api
    _apply(cluster, cluster_job("toobig", namespace, resources={"limits": {"cpu": "1"}, "requests": {"cpu": "2"}}))
    st = _wait_phase(custom, namespace, "toobig", "Failed")
    assert st["reason"] == "InvalidSpec"
    assert "422" in st["message"]
    assert "toobig-node-" in st["message"]
    assert not _pods(core, namespace, "toobig")
    assert st["restartCount"] == 0


def test_a_waiting_pod_is_shown_and_fails_the_job_at_the_start_deadline(cluster, operator, namespace, api):
    """ImagePullBackOff (as the kubelet writes it) is on the job within seconds, counts as no
    failure, and ends the job at runPolicy.startDeadlineSeconds without using backoffLimit."""
    core, custom = api
    _apply(cluster, cluster_job("pull", namespace, runPolicy={"startDeadlineSeconds": 8, "backoffLimit": 0}))
    _wait_pods(core, namespace, "pull", 2)
    set_pod_status(core, namespace, "pull-node-0", "Running")
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}
    container = {
        "name": "trainer",
        "ready": False,
        "restartCount": 0,
        "image": "nope:1",
        "imageID": "",
        "state": waiting,
    }
    core.patch_namespaced_pod_status(
        "pull-node-1", namespace, {"status": {"phase": "Pending", "containerStatuses": [container]}}
    )
    cond = wait_for(
        lambda: (c := _condition(custom, namespace, "pull", "PodsWaiting")) and c["status"] == "True" and c,
        5,
        "PodsWaiting ImagePullBackOff",
    )
    assert cond["reason"] == "ImagePullBackOff"
    assert cond["message"] == 'pull-node-1: Back-off pulling image "nope:1"'
    assert ("ImagePullBackOff", cond["message"]) in _warnings(core, namespace, "pull")
    st = _wait_phase(custom, namespace, "pull", "Failed", timeout=20)
    assert st["reason"] == "ImagePullBackOff"
    assert "startDeadlineSeconds=8" in st["message"]
    assert st["restartCount"] == 0
    assert st.get("failedAttempts", 0) == 0


def test_kube_update_surfaces_a_conflict(cluster, namespace):
    """Kube.update must not swallow a 409: the pass stops before creating pods and is retried."""
    from controller.kube import Conflict, Kube

    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": namespace},
        "data": {"job.yaml": "a"},
    }
    with cluster.api_client() as api_client:
        kube = Kube(api_client)
        kube.create(cm)
        read = kube._get(kube.core.read_namespaced_config_map, "c", namespace)
        kube.update({**read, "data": {"job.yaml": "b"}})  # current resourceVersion: fine
        with pytest.raises(Conflict):
            kube.update({**read, "data": {"job.yaml": "c"}})  # the version read before that update
        assert kube._get(kube.core.read_namespaced_config_map, "c", namespace)["data"] == {"job.yaml": "b"}


def test_a_knock_on_exit_next_to_a_peer_on_a_not_ready_node_is_a_disruption(cluster, operator, namespace, api):
    """issue #18 (8): node 0 exits 1 while node 1's pod still says Running, but its Node is NotReady:
    the controller reads the Node and counts a disruption (backoffLimit=0 would end the job)."""
    core, custom = api
    node = f"kubeclip-notready-{uuid.uuid4().hex[:6]}"
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    try:
        ready = {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting",
        }
        core.patch_node_status(
            node, {"status": {"conditions": [{**ready, "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}}
        )
        _apply(cluster, cluster_job("lost", namespace, runPolicy={"backoffLimit": 0}))
        _wait_pods(core, namespace, "lost", 2)
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "lost-node-1"}}
        core.create_namespaced_pod_binding(
            "lost-node-1", namespace, {**binding, "target": {"kind": "Node", "name": node}}, _preload_content=False
        )
        _run_all(core, namespace, "lost")
        _wait_phase(custom, namespace, "lost", "Running")
        set_pod_status(core, namespace, "lost-node-0", "Failed", exit_code=1, message="RuntimeError: peer gone")
        st = _wait_phase(custom, namespace, "lost", "Restarting")
        assert (st["reason"], st["restartCount"], st["disruptedAttempts"], st.get("failedAttempts", 0)) == (
            "NodeLost",
            1,
            1,
            0,
        )
        assert "lost-node-1: its node is NotReady" in st["message"]
        # issue #18 (1): a NotReady node is not gone: its pod is deleted gracefully, never forced, and
        # the next attempt's node 1 waits for the name (node 0 is recreated).
        _wait_pods(core, namespace, "lost", 1, attempt=1)
        old = core.read_namespaced_pod("lost-node-1", namespace)
        assert old.metadata.deletion_timestamp is not None
        assert old.metadata.labels["kubeclip.dev/attempt"] == "0"
    finally:
        core.delete_node(node)
        if any(p.metadata.name == "lost-node-1" for p in _pods(core, namespace, "lost")):
            core.delete_namespaced_pod("lost-node-1", namespace, grace_period_seconds=0)
