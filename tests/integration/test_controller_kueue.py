"""The controller's Kueue integration on the real kube-apiserver with Kueue v0.17.0's own CRDs.

The controller runs as its ServiceAccount with the chart's rules (``kueue.enabled``: the Workload
rules too). There is no Kueue manager and no kubelet: the tests play both, writing the Workload's
admission / eviction (as Kueue's scheduler does) and the pods' status. What is real: Kueue's CRD
schemas (the Workload the controller makes must validate against them), RBAC, the status
subresources, resourceVersion conflicts, and the API server's answer without Kueue's CRDs.

The CRDs come from the Go module pinned in hack/kueue/go.mod (``go mod download``), the same
files `make kueue-up` applies.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import pytest
import yaml
from controller_harness import controller_kubeconfig, set_pod_status

from devkit.jobs import cluster_job
from devkit.operator import Operator, install_crd, wait_established
from devkit.paths import REPO
from devkit.wait import wait_for
from hack.addons import go_module_dir

pytestmark = [pytest.mark.cluster]

KUEUE = ("kueue.x-k8s.io", "v1beta2")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FINALIZER = "kueue.x-k8s.io/resource-in-use"


def kueue_crds() -> list[Path]:
    return sorted(
        (go_module_dir(REPO / "hack/kueue", "sigs.k8s.io/kueue") / "config/components/crd/bases").glob("*.yaml")
    )


@pytest.fixture(scope="module")
def system_ns(cluster):
    name = f"kubeclip-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(cluster, system_ns, tmp_path_factory):
    install_crd(cluster.kubectl)
    kubeconfig = controller_kubeconfig(cluster, system_ns, tmp_path_factory.mktemp("ctl") / "kubeconfig", kueue=True)
    log = tmp_path_factory.mktemp("ctl-log") / "controller.log"
    op = Operator(kubeconfig, log, "--all-namespaces", f"--lease-namespace={system_ns}").start()
    op.wait_ready()
    yield op
    op.stop()


@pytest.fixture
def api(cluster):
    from kubernetes import client

    with cluster.api_client() as a:
        yield client.CoreV1Api(a), client.CustomObjectsApi(a)


def _labelled_job(name, ns, **spec):
    doc = cluster_job(name, ns, resources={"requests": {"cpu": "1"}}, **spec)
    doc["metadata"].setdefault("labels", {})[QUEUE_LABEL] = "team-a"
    return doc


def _ftj(custom, ns, name):
    return custom.get_namespaced_custom_object("kubeclip.dev", "v1alpha1", ns, "finetunejobs", name)


def _status(custom, ns, name):
    return _ftj(custom, ns, name).get("status") or {}


def _pods(core, ns, name):
    return core.list_namespaced_pod(ns, label_selector=f"kubeclip.dev/job-name={name}").items


def _workload(custom, ns, name):
    return custom.get_namespaced_custom_object(*KUEUE, ns, "workloads", f"finetunejob-{name}")


def _kueue_writes_status(custom, ns, name, mutate):
    """Play Kueue: read the Workload, change its status, PUT it back (retried on a conflict)."""

    def once():
        wl = _workload(custom, ns, name)
        status = copy.deepcopy(wl.get("status") or {})
        mutate(status)
        wl["status"] = status
        try:
            custom.replace_namespaced_custom_object_status(*KUEUE, ns, "workloads", wl["metadata"]["name"], wl)
            return True
        except Exception as err:  # a conflict with the controller's own write: read again
            if getattr(err, "status", None) == 409:
                return False
            raise

    wait_for(once, 20, "a Workload status write")


def _cond(type_, status, reason, message="m"):
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def _set(status, *conds):
    by_type = {c["type"]: c for c in status.get("conditions") or []}
    for c in conds:
        by_type[c["type"]] = c
    status["conditions"] = list(by_type.values())


def test_a_labelled_job_without_kueues_crds_fails_fast_with_one_reason(cluster, operator, namespace, api):
    core, custom = api
    assert cluster.kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode != 0
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_labelled_job("nokueue", namespace)))
    wait_for(lambda: _status(custom, namespace, "nokueue").get("phase") == "Failed", 30, "Failed", every_s=0.3)
    st = _status(custom, namespace, "nokueue")
    assert st["reason"] == "KueueNotInstalled", st
    assert "install Kueue, or remove the label" in st["message"], st
    assert _pods(core, namespace, "nokueue") == []


@pytest.fixture(scope="module")
def kueue_crds_applied(cluster):
    files = kueue_crds()
    assert len(files) == 11, files
    cluster.kubectl("apply", "--server-side", *[a for f in files for a in ("-f", str(f))])
    wait_established(cluster.kubectl, "workloads.kueue.x-k8s.io")
    flavor = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "pool-a"},
        "spec": {
            "nodeLabels": {"pool": "a"},
            "tolerations": [{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(flavor))


def test_queued_admitted_evicted_requeued_readmitted_and_finished(
    cluster, operator, kueue_crds_applied, namespace, api
):
    core, custom = api
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_labelled_job("q", namespace, numNodes=2)))
    # A Workload that Kueue's CRD accepts; the job Queued with no pod.
    wait_for(lambda: _status(custom, namespace, "q").get("phase") == "Queued", 30, "Queued", every_s=0.3)
    wl = wait_for(
        lambda: _workload(custom, namespace, "q"), 30, "the Workload", every_s=0.3
    )  # created after the status
    assert wl["spec"]["queueName"] == "team-a"
    assert wl["spec"]["podSets"][0]["count"] == 2
    assert wl["metadata"]["finalizers"] == [FINALIZER]
    assert wl["metadata"]["ownerReferences"][0]["uid"] == _ftj(custom, namespace, "q")["metadata"]["uid"]
    assert _pods(core, namespace, "q") == []
    msg = "couldn't assign flavors to pod set node: insufficient unused quota for cpu in flavor pool-a"
    _kueue_writes_status(custom, namespace, "q", lambda s: _set(s, _cond("QuotaReserved", "False", "Pending", msg)))
    wait_for(lambda: msg in (_status(custom, namespace, "q").get("message") or ""), 30, "Kueue's message", every_s=0.3)
    table = cluster.kubectl("-n", namespace, "get", "ftj", "q").stdout
    assert "Queued" in table, table
    assert "insufficient unused quota" in table, table

    # Admitted: the pods, with the flavor's node labels and tolerations.
    def admit(s):
        s["admission"] = {
            "clusterQueue": "cq",
            "podSetAssignments": [
                {"name": "node", "flavors": {"cpu": "pool-a"}, "count": 2, "resourceUsage": {"cpu": "2"}}
            ],
        }
        _set(s, _cond("QuotaReserved", "True", "QuotaReserved"), _cond("Admitted", "True", "Admitted"))

    _kueue_writes_status(custom, namespace, "q", admit)
    wait_for(lambda: len(_pods(core, namespace, "q")) == 2, 30, "2 pods", every_s=0.3)
    for p in _pods(core, namespace, "q"):
        assert p.spec.node_selector == {"pool": "a"}, p.spec.node_selector
        assert any(t.key == "pool" and t.effect == "NoSchedule" for t in p.spec.tolerations or [])
    assert _status(custom, namespace, "q")["queue"]["clusterQueue"] == "cq"
    for i in (0, 1):
        set_pod_status(core, namespace, f"q-node-{i}", "Running")
    wait_for(
        lambda: any(
            c["type"] == "PodsReady" and c["status"] == "True"
            for c in _workload(custom, namespace, "q")["status"]["conditions"]
        ),
        30,
        "PodsReady on the Workload",
        every_s=0.3,
    )
    assert _status(custom, namespace, "q")["phase"] == "Running"

    # Evicted (preempted): pods gone, Queued, nothing counted, the quota given back once none is left.
    _kueue_writes_status(
        custom,
        namespace,
        "q",
        lambda s: _set(s, _cond("Evicted", "True", "Preempted", "Preempted to accommodate a workload")),
    )
    wait_for(
        lambda: _status(custom, namespace, "q").get("phase") == "Queued", 30, "Queued after the eviction", every_s=0.3
    )
    wait_for(lambda: not _pods(core, namespace, "q"), 30, "pods deleted", every_s=0.3)
    wait_for(
        lambda: "admission" not in (_workload(custom, namespace, "q").get("status") or {}),
        30,
        "quota given back",
        every_s=0.3,
    )
    conds = {c["type"]: c for c in _workload(custom, namespace, "q")["status"]["conditions"]}
    assert conds["QuotaReserved"]["status"] == "False", conds
    assert conds["Requeued"]["status"] == "True", conds
    st = _status(custom, namespace, "q")
    assert (st.get("restartCount", 0), st.get("failedAttempts", 0), st.get("disruptedAttempts", 0)) == (0, 0, 0), st

    # Re-admitted: the same attempt's pods again.
    def readmit(s):
        admit(s)
        _set(s, _cond("Evicted", "False", "Admitted"), _cond("Requeued", "False", "Admitted"))

    _kueue_writes_status(custom, namespace, "q", readmit)
    wait_for(lambda: len(_pods(core, namespace, "q")) == 2, 30, "pods again", every_s=0.3)
    assert {p.metadata.labels["kubeclip.dev/attempt"] for p in _pods(core, namespace, "q")} == {"0"}
    for i in (0, 1):
        set_pod_status(core, namespace, f"q-node-{i}", "Running")
    set_pod_status(core, namespace, "q-node-0", "Succeeded", exit_code=0, message="done")
    wait_for(lambda: _status(custom, namespace, "q").get("phase") == "Succeeded", 30, "Succeeded", every_s=0.3)
    # Finished written, the finalizer let go: Kueue can give the quota to the next job.
    wait_for(
        lambda: FINALIZER not in (_workload(custom, namespace, "q")["metadata"].get("finalizers") or []),
        30,
        "the finalizer removed",
        every_s=0.3,
    )
    conds = {c["type"]: c for c in _workload(custom, namespace, "q")["status"]["conditions"]}
    assert conds["Finished"]["status"] == "True", conds
    assert conds["Finished"]["reason"] == "Succeeded", conds
    events = cluster.kubectl("-n", namespace, "get", "events", "--field-selector", "involvedObject.name=q").stdout
    for reason in ("Queued", "Admitted", "EvictedPreempted", "Succeeded"):
        assert reason in events, events


def test_deleting_a_queued_job_lets_its_workload_go(cluster, operator, kueue_crds_applied, namespace, api):
    _, custom = api
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_labelled_job("gone", namespace)))
    wait_for(lambda: _status(custom, namespace, "gone").get("phase") == "Queued", 30, "Queued", every_s=0.3)
    wait_for(lambda: _workload(custom, namespace, "gone"), 30, "the Workload", every_s=0.3)
    cluster.kubectl("-n", namespace, "delete", "ftj", "gone", "--wait=false")

    def let_go():
        from kubernetes.client.exceptions import ApiException

        try:
            wl = _workload(custom, namespace, "gone")
        except ApiException as err:  # the garbage collector deleted it once the finalizer was off
            return err.status == 404
        return FINALIZER not in (wl["metadata"].get("finalizers") or [])

    wait_for(let_go, 30, "the deleted job's Workload let go", every_s=0.3)


def test_suspend_is_the_workloads_active_false(cluster, operator, kueue_crds_applied, namespace, api):
    _, custom = api
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(_labelled_job("sus", namespace)))
    wait_for(lambda: _status(custom, namespace, "sus").get("phase") == "Queued", 30, "Queued", every_s=0.3)
    wait_for(lambda: _workload(custom, namespace, "sus"), 30, "the Workload", every_s=0.3)
    custom.patch_namespaced_custom_object(
        "kubeclip.dev", "v1alpha1", namespace, "finetunejobs", "sus", {"spec": {"runPolicy": {"suspend": True}}}
    )
    wait_for(
        lambda: _workload(custom, namespace, "sus")["spec"].get("active") is False, 30, "active: false", every_s=0.3
    )
    assert _status(custom, namespace, "sus")["phase"] == "Suspended"
