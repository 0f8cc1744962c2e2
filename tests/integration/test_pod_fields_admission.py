"""The pod fields (spec.podLabels, podAnnotations, schedulerName, runtimeClassName) on the real API
server: the CRD's CEL rule refuses kubeclip's and Kubernetes' own keys whatever the chart allows,
and the chart's ValidatingAdmissionPolicy refuses what its ``admission.allowed*`` values do not name.

No controller is needed: these are the API server's own checks (server-side dry runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from devkit.jobs import cluster_job
from devkit.operator import install_crd
from devkit.wait import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "helm" / "kubeclip"


def _values(tmp_path: Path, values: dict) -> str:
    path = tmp_path / f"values-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _dry_run(cluster, doc):
    return cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc), check=False)


def test_reserved_keys_are_refused_by_the_crd_and_unlisted_fields_by_the_chart(cluster, namespace, tmp_path):
    install_crd(cluster.kubectl)
    # The CRD alone (no policy yet): kubeclip's and Kubernetes' keys are refused, others pass.
    for field, key in (
        ("podLabels", "kubeclip.dev/job-name"),
        ("podAnnotations", "container.apparmor.security.beta.kubernetes.io/trainer"),
        ("podLabels", "kueue.x-k8s.io/queue-name"),
    ):
        out = _dry_run(cluster, cluster_job("reserved", namespace, **{field: {key: "x"}}))
        assert out.returncode != 0, (key, out.stderr)
        assert "are reserved" in out.stderr, (key, out.stderr)
    assert _dry_run(cluster, cluster_job("ok", namespace, podLabels={"app.kubernetes.io/part-of": "x"})).returncode == 0

    release = "pf-" + namespace[-6:]
    base = {"crds": {"enabled": False}}
    values = {**base, "admission": {"allowedSchedulerNames": ["volcano"], "allowedPodLabelKeys": ["cost-center"]}}
    cluster.helm("install", release, str(CHART), "-n", namespace, "-f", _values(tmp_path, values))
    try:
        unlisted = cluster_job("unlisted", namespace, podLabels={"team": "a"})

        def refused(doc, text):
            out = _dry_run(cluster, doc)
            return out.returncode != 0 and text in out.stderr and out.stderr

        # Policies reach the API server's admission through an informer: allow it a moment.
        wait_for(
            lambda: refused(unlisted, "only the keys cost-center are allowed"), 30, "podLabels refused", every_s=0.5
        )
        assert refused(cluster_job("rc", namespace, runtimeClassName="gvisor"), "spec.runtimeClassName: not allowed")
        assert refused(cluster_job("an", namespace, podAnnotations={"a": "b"}), "spec.podAnnotations: not allowed")
        assert refused(cluster_job("sn", namespace, schedulerName="other"), "only volcano allowed")
        listed = cluster_job(
            "listed",
            namespace,
            schedulerName="volcano",
            podLabels={"cost-center": "vision"},
            topologySpreadConstraints=[{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        )
        out = _dry_run(cluster, listed)
        assert out.returncode == 0, out.stderr
    finally:
        cluster.helm("uninstall", release, "-n", namespace, check=False)
