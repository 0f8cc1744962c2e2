"""What a job author cannot do, on the real node with the release `make deploy` installed (the
chart's defaults): a job with an nfs volume or a projected serviceAccountToken volume is refused at
``kubectl apply``; a job that is let in gets its NetworkPolicy from the in-cluster controller (the
local cluster's ``bridge`` CNI does not enforce NetworkPolicy, so only its presence is checked).
"""

from __future__ import annotations

import json

import pytest
from e2e_helpers import ftj_manifest

from devkit.wait import wait_for

pytestmark = pytest.mark.e2e


def _with_volume(name: str, volume: dict) -> str:
    doc = json.loads(ftj_manifest(name))
    doc["spec"]["volumes"] = [{"name": "data", **volume}]
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("name", "volume", "error"),
    [
        ("nfs", {"nfs": {"server": "10.0.0.1", "path": "/exports"}}, "data (nfs): volume type not allowed here"),
        (
            "satoken",
            {"projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            "projected volumes may hold only",
        ),
    ],
)
def test_the_charts_defaults_refuse_the_volume_at_apply(kube, namespace, name, volume, error):
    out = kube.kubectl("-n", namespace, "apply", "-f", "-", input=_with_volume(name, volume), check=False)
    assert out.returncode != 0, out.stderr
    assert error in out.stderr, out.stderr
    assert kube.kubectl("-n", namespace, "get", "ftj", name, check=False).returncode != 0


def test_an_admitted_job_gets_its_network_policy(kube, namespace):
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=ftj_manifest("guarded"))
    try:
        np = wait_for(
            lambda: kube.kubectl("-n", namespace, "get", "networkpolicy", "guarded", "-o", "json", check=False).stdout,
            60,
            "the controller to create the job's NetworkPolicy",
            every_s=1,
        )
        spec = json.loads(np)["spec"]
        assert spec["podSelector"] == {"matchLabels": {"kubeclip.dev/job-name": "guarded"}}
        assert {"podSelector": spec["podSelector"]} in [rule["from"][0] for rule in spec["ingress"]]
    finally:
        kube.kubectl("-n", namespace, "delete", "ftj", "guarded", "--wait=false", check=False)
