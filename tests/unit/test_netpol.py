"""The per-job NetworkPolicy (controller/netpol.py): it selects exactly the job's pods and lets in
only the job's own pods (any port), and the monitoring namespace and the controller's pods on the
metrics port; the pods the controller builds match it and name that port."""

from __future__ import annotations

from pathlib import Path

import yaml

from controller import builders, naming
from controller.netpol import network_policy
from controller.settings import Settings
from kubeclip.api import FineTuneJobSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _job(name="clip", ns="team-a"):
    job = yaml.safe_load((EXAMPLES / "finetune-multinode.yaml").read_text())
    job["metadata"].update(name=name, namespace=ns, uid="1234")
    return job


SETTINGS = Settings(
    lease_namespace="kubeclip-system",
    controller_pod_labels=(("app.kubernetes.io/component", "controller"), ("app.kubernetes.io/name", "kubeclip")),
    monitoring_namespace="monitoring",
)


def test_the_policy_admits_the_job_itself_the_scraper_and_the_controller():
    job = _job()
    np = network_policy(job, SETTINGS)
    assert np["metadata"]["namespace"] == "team-a"
    assert np["metadata"]["ownerReferences"][0]["uid"] == "1234"  # deleted with the job
    spec = np["spec"]
    assert spec["podSelector"] == {"matchLabels": {naming.LABEL_JOB: "clip"}}
    assert spec["policyTypes"] == ["Ingress"]
    own, controller, scraper = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {naming.LABEL_JOB: "clip"}}}]}  # every port
    metrics = [{"protocol": "TCP", "port": "metrics"}]
    assert controller == {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeclip-system"}},
                "podSelector": {
                    "matchLabels": {"app.kubernetes.io/component": "controller", "app.kubernetes.io/name": "kubeclip"}
                },
            }
        ],
        "ports": metrics,
    }
    assert scraper == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": metrics,
    }


def test_the_controllers_pods_match_it_and_another_jobs_do_not():
    job, other = _job(), _job(name="clip-2")
    spec = FineTuneJobSpec.model_validate(job["spec"])
    selector = network_policy(job, SETTINGS)["spec"]["podSelector"]["matchLabels"]
    for i in range(spec.numNodes):
        pod = builders.pod(job, spec, i, 0, "trainer:1")
        assert selector.items() <= pod["metadata"]["labels"].items()
        assert "metrics" in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    stranger = builders.pod(other, FineTuneJobSpec.model_validate(other["spec"]), 0, 0, "trainer:1")
    assert not selector.items() <= stranger["metadata"]["labels"].items()


def test_without_a_monitoring_namespace_no_scraper_is_let_in():
    np = network_policy(_job(), Settings(lease_namespace="ops", monitoring_namespace=""))
    assert len(np["spec"]["ingress"]) == 2
    controller = np["spec"]["ingress"][1]["from"][0]
    assert controller == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
