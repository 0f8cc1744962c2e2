"""The pod fields a cluster's conventions need (spec.podLabels, podAnnotations, schedulerName,
runtimeClassName, topologySpreadConstraints): they reach the node pods, never over kubeclip's own
keys, and keys that change what the pods may do are refused by the API model and the CRD's rule."""

from __future__ import annotations

import re

import pytest

from controller import builders, naming
from controller.crd import crd
from kubeclip.api import ConfigError, parse_job_spec

BASE = {
    "image": "img:1",
    "model": {"name": "ViT-B-32"},
    "dataset": {"trainCsv": "/data/train.csv"},
    "output": {"path": "/out"},
    "numNodes": 2,
}
JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "u"}}
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}


def node_pod(**spec):
    full = {**BASE, **spec}
    return builders.pod({**JOB, "spec": full}, parse_job_spec(full), 1, 0, "img:1")


def test_the_fields_reach_the_pods_and_kubeclips_labels_win():
    p = node_pod(
        podLabels={"cost-center": "vision", "app.kubernetes.io/part-of": "search"},
        podAnnotations={"sidecar.istio.io/inject": "false"},
        schedulerName="volcano",
        runtimeClassName="gvisor",
        topologySpreadConstraints=[SPREAD],
    )
    labels = p["metadata"]["labels"]
    assert labels["cost-center"] == "vision"
    assert labels["app.kubernetes.io/part-of"] == "search"
    assert labels[naming.LABEL_JOB] == "j"
    assert labels[naming.LABEL_INDEX] == "1"
    assert p["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert p["spec"]["schedulerName"] == "volcano"
    assert p["spec"]["runtimeClassName"] == "gvisor"
    assert p["spec"]["topologySpreadConstraints"] == [SPREAD]
    plain = node_pod()
    assert "sidecar.istio.io/inject" not in plain["metadata"]["annotations"]
    assert not {"schedulerName", "runtimeClassName", "topologySpreadConstraints"} & set(plain["spec"])


@pytest.mark.parametrize(
    ("field", "key"),
    [
        ("podLabels", "kubeclip.dev/job-name"),  # would move the pod into another job
        ("podLabels", "kueue.x-k8s.io/queue-name"),  # Kueue's pod integration would take the pod over
        ("podLabels", "kubernetes.io/metadata.name"),
        ("podAnnotations", "container.apparmor.security.beta.kubernetes.io/trainer"),  # unconfined AppArmor
        ("podAnnotations", "seccomp.security.alpha.kubernetes.io/pod"),
        ("podAnnotations", "scheduler.alpha.kubernetes.io/critical-pod"),
        ("podAnnotations", "x.kubeclip.dev/anything"),
        ("podLabels", "bad key!"),
    ],
)
def test_reserved_or_invalid_keys_are_refused_by_the_model_and_the_crd_rule(field, key):
    with pytest.raises(ConfigError, match=rf"spec\.{field}"):
        parse_job_spec({**BASE, field: {key: "x"}})
    rule = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][field][
        "x-kubernetes-validations"
    ][0]["rule"]
    # The CEL rule's two regular expressions, as the API server reads them (RE2 == Python here).
    reserved, allowed = (p.replace("\\\\", "\\") for p in re.findall(r"matches\('([^']*)'\)", rule))
    if key != "bad key!":
        assert re.match(reserved, key)
        assert not re.match(allowed, key)


def test_label_values_and_sizes_are_bounded():
    with pytest.raises(ConfigError, match="not a valid label value"):
        parse_job_spec({**BASE, "podLabels": {"team": "a b"}})
    with pytest.raises(ConfigError, match="podLabels"):
        parse_job_spec({**BASE, "podLabels": {f"k{i}": "v" for i in range(33)}})
    with pytest.raises(ConfigError, match="longer than 4096"):
        parse_job_spec({**BASE, "podAnnotations": {"note": "x" * 4097}})
    with pytest.raises(ConfigError, match="schedulerName"):
        parse_job_spec({**BASE, "schedulerName": "Not_A_Name"})
    with pytest.raises(ConfigError, match="topologySpreadConstraints"):
        parse_job_spec({**BASE, "topologySpreadConstraints": [SPREAD] * 9})
