"""FineTuneJobs queued by Kueue on the real node (`make kueue-up`: Kueue v0.17.0 built from the Go proxy,
FineTuneJob registered under integrations.externalFrameworks).

Who uses it: ``make e2e``. The paths issue #17 lists: a ClusterQueue whose CPU quota fits one job
runs two jobs one after the other (the second Queued with 0 pods and Kueue's message meanwhile); a
high-priority job preempts a running low-priority one, which goes back to Queued without a failure,
is re-admitted and resumes from its checkpoint (then it is deleted: the resume is what is tested); with Kueue's manager stopped, jobs without the
label (and any pod) are not held up by Kueue's webhooks.
"""

from __future__ import annotations

import json
import uuid

import pytest
from e2e_helpers import debug, ftj, ftj_manifest, load_dataset, wait_resumed

from devkit.wait import wait_for

pytestmark = pytest.mark.e2e

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
#: Each job: 2 node pods x 100m CPU (e2e_helpers.ftj_manifest); the quota fits one job, not two.
CPU_QUOTA = "300m"


def _status(kube, ns, name) -> dict:
    return ftj(kube, ns, name).get("status") or {}


def _phase(kube, ns, name) -> str:
    return _status(kube, ns, name).get("phase", "")


def _pods(kube, ns, name) -> list[str]:
    return kube.kubectl(
        "-n", ns, "get", "pods", "-l", f"kubeclip.dev/job-name={name}", "-o", "jsonpath={.items[*].metadata.name}"
    ).stdout.split()


def _workload(kube, ns, name) -> dict:
    return json.loads(kube.kubectl("-n", ns, "get", "workloads", f"finetunejob-{name}", "-o", "json").stdout)


def _cond(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def _until(kube, ns, name, phases, timeout_s, explain):
    return wait_for(
        lambda: _phase(kube, ns, name) in phases and _phase(kube, ns, name),
        timeout_s,
        f"{ns}/{name} in {phases}",
        explain=explain,
        every_s=2,
    )


def _queued_job(name: str, queue: str, priority: str | None = None, **kw) -> str:
    doc = json.loads(ftj_manifest(name, **kw))
    doc["metadata"]["labels"] = {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority} if priority else {})}
    return json.dumps(doc)


@pytest.fixture
def queues(kube, namespace):
    """A ClusterQueue (CPU quota for one job, preemption of lower priorities) and LocalQueue ``team``
    in the test's namespace; WorkloadPriorityClasses ``<cq>-low`` / ``<cq>-high``."""
    if kube.kubectl("get", "crd", "workloads.kueue.x-k8s.io", check=False).returncode != 0:
        pytest.fail("Kueue is not installed: run `make kueue-up` (`make e2e` does)", pytrace=False)
    cq = f"e2e-{uuid.uuid4().hex[:8]}"
    docs = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory"],
                        "flavors": [
                            {
                                "name": "default-flavor",
                                "resources": [
                                    {"name": "cpu", "nominalQuota": CPU_QUOTA},
                                    {"name": "memory", "nominalQuota": "8Gi"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "team", "namespace": namespace},
            "spec": {"clusterQueue": cq},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": f"{cq}-low"},
            "value": 10,
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": f"{cq}-high"},
            "value": 1000,
        },
    ]
    kube.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    yield cq
    for kind, name in (("workloadpriorityclass", f"{cq}-low"), ("workloadpriorityclass", f"{cq}-high")):
        kube.kubectl("delete", kind, name, "--wait=false", check=False)
    kube.kubectl("delete", "clusterqueue", cq, "--wait=false", check=False)


def test_quota_runs_one_job_while_the_other_waits_queued_with_kueues_message(kube, namespace, dataset_dir, queues):
    load_dataset(kube, namespace, dataset_dir)
    for name in ("first", "second"):
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=_queued_job(name, "team", epochs=2))
    ex = {n: debug(kube, namespace, n) for n in ("first", "second")}

    def one_running_one_waiting():
        phases = {n: _phase(kube, namespace, n) for n in ("first", "second")}
        if sorted(phases.values()) != ["Queued", "Running"]:
            return None
        return next(n for n, p in phases.items() if p == "Running"), next(n for n, p in phases.items() if p == "Queued")

    running, waiting = wait_for(
        one_running_one_waiting, 300, "one job Running, one Queued", explain=ex["first"], every_s=2
    )
    st = _status(kube, namespace, waiting)
    assert _pods(kube, namespace, waiting) == [], st
    assert "insufficient unused quota for cpu" in st["message"], st
    assert "insufficient unused quota" in st["queue"]["pending"], st
    queued = next(c for c in st["conditions"] if c["type"] == "Queued")
    assert queued["status"] == "True"
    assert "insufficient unused quota" in queued["message"]
    table = kube.kubectl("-n", namespace, "get", "ftj", waiting).stdout
    assert "Queued" in table, table
    assert "insufficient unused quota" in table, table
    assert _status(kube, namespace, running)["queue"]["clusterQueue"] == queues
    # The first finishes; Kueue gets its quota back (Finished, finalizer gone) and admits the second.
    _until(kube, namespace, running, ("Succeeded", "Failed"), 900, ex[running])
    assert _phase(kube, namespace, running) == "Succeeded", ex[running]()
    wl = _workload(kube, namespace, running)
    assert _cond(wl, "Finished").get("status") == "True", wl
    assert "kueue.x-k8s.io/resource-in-use" not in (wl["metadata"].get("finalizers") or []), wl
    _until(kube, namespace, waiting, ("Succeeded", "Failed"), 900, ex[waiting])
    st = _status(kube, namespace, waiting)
    assert st["phase"] == "Succeeded", ex[waiting]()
    assert st["restartCount"] == 0
    assert st.get("failedAttempts", 0) == 0
    listing = kube.kubectl("-n", namespace, "get", "workloads").stdout
    assert f"finetunejob-{waiting}" in listing, listing
    assert f"finetunejob-{running}" in listing, listing
    events = kube.kubectl("-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={waiting}").stdout
    assert "Queued" in events, events
    assert "Admitted" in events, events


def test_preempted_job_goes_back_to_queued_and_resumes_from_its_checkpoint(kube, namespace, dataset_dir, queues):
    load_dataset(kube, namespace, dataset_dir)
    kube.kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        input=_queued_job("low", "team", f"{queues}-low", epochs=10, checkpoint_every=3, backoff=0),
    )
    ex_low = debug(kube, namespace, "low")
    wait_for(
        lambda: (_status(kube, namespace, "low").get("progress") or {}).get("lastCheckpointStep"),
        600,
        "low: first checkpoint",
        explain=ex_low,
        every_s=2,
    )
    ckpt_step = int(_status(kube, namespace, "low")["progress"]["lastCheckpointStep"])
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=_queued_job("high", "team", f"{queues}-high", epochs=1))
    ex_high = debug(kube, namespace, "high")
    # The low job's pods go and it is Queued again: no failure, nothing counted.
    _until(kube, namespace, "low", ("Queued",), 180, ex_low)
    st = _status(kube, namespace, "low")
    assert "Preempted" in st["reason"], st
    assert "evicted by Kueue" in st["message"], st
    assert (st["restartCount"], st.get("failedAttempts", 0), st.get("disruptedAttempts", 0)) == (0, 0, 0), st
    wait_for(lambda: _pods(kube, namespace, "low") == [], 120, "low's pods gone", explain=ex_low, every_s=1)
    _until(kube, namespace, "high", ("Succeeded", "Failed"), 900, ex_high)
    assert _phase(kube, namespace, "high") == "Succeeded", ex_high()
    # Re-admitted once the high one is done: it resumes from its checkpoint and trains on from it.
    # That proves the resume; the job is then deleted instead of run to Succeeded (the high job
    # here and test_finetune.py's 2-node job prove runs to the end).
    resumed, first = wait_resumed(kube, namespace, "low", ex_low, 900, "re-admitted, Running")
    st = _status(kube, namespace, "low")
    assert st.get("failedAttempts", 0) == 0, st
    assert st.get("disruptedAttempts", 0) == 0, st
    step = int(resumed.group(2))
    assert step >= ckpt_step > 0, (resumed.group(0), ckpt_step)
    assert first == step + 1, (resumed.group(0), first)
    evictions = _workload(kube, namespace, "low")["status"].get("schedulingStats", {}).get("evictions") or []
    assert any(e.get("reason") == "Preempted" for e in evictions), evictions
    kube.kubectl("-n", namespace, "delete", "ftj", "low", "--wait=false")


def test_kueue_stopped_mid_run_leaves_jobs_without_the_label_alone(kube, namespace, dataset_dir):
    if kube.kubectl("-n", "kueue-system", "get", "deploy", "kueue-controller-manager", check=False).returncode != 0:
        pytest.fail("Kueue is not installed: run `make kueue-up` (`make e2e` does)", pytrace=False)
    load_dataset(kube, namespace, dataset_dir)
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=ftj_manifest("plain", epochs=4))
    explain = debug(kube, namespace, "plain")
    _until(kube, namespace, "plain", ("Running",), 300, explain)
    kube.kubectl("-n", "kueue-system", "scale", "deploy/kueue-controller-manager", "--replicas=0")
    try:
        wait_for(
            lambda: (
                not kube.kubectl(
                    "-n", "kueue-system", "get", "pods", "-l", "control-plane=controller-manager", "-o", "name"
                ).stdout.strip()
            ),
            120,
            "Kueue's manager gone",
            every_s=1,
        )
        # A pod of any kind can still be created (Kueue's pod webhooks are not installed), and a
        # second label-less FineTuneJob starts and finishes beside the first.
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "plain-pod"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "c",
                        "image": "kubeclip.local/busybox:dev",
                        "command": ["/bin/sh", "-c", "true"],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True,
                            "runAsUser": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                    }
                ],
            },
        }
        made = kube.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod), check=False)
        assert made.returncode == 0, made.stderr
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=ftj_manifest("plain2", epochs=1))
        for name in ("plain", "plain2"):
            _until(kube, namespace, name, ("Succeeded", "Failed"), 900, debug(kube, namespace, name))
            st = _status(kube, namespace, name)
            assert st["phase"] == "Succeeded", st
            assert st.get("restartCount", 0) == 0, st
            assert "queue" not in st
    finally:
        kube.kubectl("-n", "kueue-system", "scale", "deploy/kueue-controller-manager", "--replicas=1")
        kube.kubectl(
            "-n", "kueue-system", "rollout", "status", "deploy/kueue-controller-manager", "--timeout=300s", check=False
        )
