"""Kill the controller mid-reconcile (SIGKILL) with a standby replica waiting on the Lease, and at
scale: every job still ends with exactly its objects, and a failure is counted exactly once.

Runs its own controllers (the other module's is stopped by then), watching one namespace only
(``--namespace``), as the ServiceAccount bound to the chart's rules.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest
import yaml
from controller_harness import controller_kubeconfig, grant_lease, set_pod_status

from devkit.jobs import cluster_job
from devkit.operator import Operator, install_crd
from devkit.wait import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION, PLURAL = "kubeclip.dev", "v1alpha1", "finetunejobs"
ENV = {
    "KUBECLIP_LEASE_DURATION_SECONDS": "4",
    "KUBECLIP_RENEW_DEADLINE_SECONDS": "3",
    "KUBECLIP_RETRY_PERIOD_SECONDS": "0.5",
    "KUBECLIP_PROGRESS_INTERVAL_SECONDS": "2",
    "KUBECLIP_RESTART_DELAY_SECONDS": "1",
    "KUBECLIP_RESTART_DELAY_CAP_SECONDS": "2",
}


@pytest.fixture(scope="module")
def setup(cluster, tmp_path_factory):
    created = install_crd(cluster.kubectl)
    sys_ns = f"kubeclip-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", sys_ns)
    d = tmp_path_factory.mktemp("failover")
    kubeconfig = controller_kubeconfig(cluster, sys_ns, d / "kubeconfig")
    yield sys_ns, kubeconfig, d, cluster
    cluster.kubectl("delete", "namespace", sys_ns, "--wait=false", check=False)
    if created:
        cluster.kubectl("delete", "crd", "finetunejobs.kubeclip.dev", "--wait=false", check=False)


@pytest.fixture
def api(cluster):
    from kubernetes import client

    with cluster.api_client() as a:
        yield client.CoreV1Api(a), client.CustomObjectsApi(a), client.CoordinationV1Api(a)


STARTED: list[Operator] = []


@pytest.fixture(autouse=True)
def _stop_all():
    yield
    while STARTED:
        STARTED.pop().stop(signal.SIGKILL)


def _start(setup, namespace, tag):
    sys_ns, kubeconfig, d, cluster = setup
    grant_lease(cluster, sys_ns, f"lease-{namespace}")  # the shipped Lease rules are for one name only
    op = Operator(
        kubeconfig,
        d / f"{tag}.log",
        f"--namespace={namespace}",
        f"--lease-namespace={sys_ns}",
        f"--lease-name=lease-{namespace}",
        env=ENV,
    ).start()
    STARTED.append(op)
    op.wait_ready()
    return op


def _inventory(core, custom, ns):
    jobs = {j["metadata"]["name"]: j for j in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]}
    all_pods = core.list_namespaced_pod(ns).items
    pods = [p for p in all_pods if p.metadata.deletion_timestamp is None]
    _inventory.deleting = [
        (p.metadata.name, p.metadata.finalizers, p.spec.node_name, p.status.phase)
        for p in all_pods
        if p.metadata.deletion_timestamp
    ]
    cms = [c.metadata.name for c in core.list_namespaced_config_map(ns, label_selector="kubeclip.dev/job-name").items]
    svcs = [s.metadata.name for s in core.list_namespaced_service(ns).items]
    return jobs, pods, cms, svcs


def _converged(core, custom, ns, n_jobs, nodes, attempt):
    jobs, pods, cms, svcs = _inventory(core, custom, ns)
    want_pods = sorted(f"{j}-node-{i}" for j in jobs for i in range(nodes))
    have_pods = sorted(p.metadata.name for p in pods)
    checks = {
        "jobs": len(jobs) == n_jobs,
        "pods": have_pods == want_pods,
        "attempts": all(p.metadata.labels["kubeclip.dev/attempt"] == str(attempt) for p in pods),
        "configmaps": sorted(cms) == sorted(f"{j}-config" for j in jobs),
        "services": sorted(svcs) == sorted(jobs),
        "restartCount": all((j.get("status") or {}).get("restartCount") == attempt for j in jobs.values()),
    }
    if all(checks.values()):
        return True
    # Raised (not returned) so that wait_for's timeout message says what is still wrong.
    bad = [k for k, ok in checks.items() if not ok]
    extra = sorted(set(have_pods) - set(want_pods))[:5]
    missing = sorted(set(want_pods) - set(have_pods))[:5]
    phases = sorted(
        {
            (n, (j.get("status") or {}).get("phase"), (j.get("status") or {}).get("restartCount"))
            for n, j in jobs.items()
        }
    )[:6]
    raise AssertionError(
        f"not yet: {bad}; extra pods {extra}; missing {missing}; deleting {_inventory.deleting[:5]}; jobs {phases}"
    )


def test_sigkill_mid_reconcile_with_standby_takeover(cluster, setup, namespace, api):
    core, custom, coord = api
    sys_ns = setup[0]
    a = _start(setup, namespace, "a")
    b = _start(setup, namespace, "b")  # standby: ready, but not reconciling
    assert wait_for(lambda: a.metric("kubeclip_controller_leader") == 1, 10, "a leads")
    assert b.metric("kubeclip_controller_leader") == 0
    n, nodes = 12, 3
    docs = [cluster_job(f"job-{i}", namespace, numNodes=nodes) for i in range(n)]
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs))
    # Kill the leader as soon as it has started creating pods: mid-reconcile for most jobs.
    wait_for(lambda: core.list_namespaced_pod(namespace).items, 30, "first pod", every_s=0.05)
    a.stop(signal.SIGKILL)
    wait_for(lambda: b.metric("kubeclip_controller_leader") == 1, 20, "standby takes over")
    wait_for(lambda: _converged(core, custom, namespace, n, nodes, 0), 60, "every job has exactly its objects")
    lease = coord.read_namespaced_lease(f"lease-{namespace}", sys_ns)
    assert lease.spec.lease_transitions >= 1

    # Now every job fails retryably, and the new leader is SIGKILLed right away.
    for j in range(n):
        for i in range(nodes):
            set_pod_status(core, namespace, f"job-{j}-node-{i}", "Running")
    wait_for(
        lambda: all(
            (x.get("status") or {}).get("phase") == "Running" for x in _inventory(core, custom, namespace)[0].values()
        ),
        60,
        "all Running",
    )
    c = _start(setup, namespace, "c")  # the next standby
    for j in range(n):
        set_pod_status(core, namespace, f"job-{j}-node-1", "Failed", exit_code=137, reason="OOMKilled")
    time.sleep(0.3)
    b.stop(signal.SIGKILL)
    wait_for(lambda: c.metric("kubeclip_controller_leader") == 1, 20, "c takes over")
    wait_for(lambda: _converged(core, custom, namespace, n, nodes, 1), 90, "one restart per job, counted once")
    for j in range(n):
        reasons = [
            e.reason for e in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name=job-{j}").items
        ]
        assert reasons.count("Created") <= 1, reasons
        assert reasons.count("OOMKilled") <= 1, reasons

    assert c.stop() == 0  # SIGTERM: clean exit, lease handed back
    assert not coord.read_namespaced_lease(f"lease-{namespace}", sys_ns).spec.holder_identity


def test_hundred_jobs_all_get_their_pods(cluster, setup, namespace, api):
    """N=100 at once (the CI size of the benchmark; timings are reported by `make bench`, not asserted)."""
    core, custom, _ = api
    op = _start(setup, namespace, "scale")
    n = 100
    docs = [cluster_job(f"s-{i}", namespace, numNodes=2) for i in range(n)]
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs), timeout=300)
    wait_for(lambda: _converged(core, custom, namespace, n, 2, 0), 240, "100 jobs with 2 pods each", every_s=1.0)
    wait_for(
        lambda: all(
            (j.get("status") or {}).get("phase") == "Created" for j in _inventory(core, custom, namespace)[0].values()
        ),
        60,
        "every status written",
    )
    assert op.metric("kubeclip_controller_reconcile_errors_total") == 0
    assert op.stop() == 0
