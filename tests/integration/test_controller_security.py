"""The security model on the real API server: what a user who may create FineTuneJobs cannot do.

* admission: the chart's ValidatingAdmissionPolicy (``helm install`` of helm/kubeclip) refuses a
  hostPath volume and a non-default ServiceAccount, and ``admission.allowHostPath`` lets hostPath
  through (``helm upgrade``);
* immutability: the CRD's CEL transition rules refuse a change of the trainer part of the spec
  while the job runs, and allow it once the job is Suspended; runPolicy and the cluster keys stay
  mutable.

No controller is needed: these are the API server's own checks. The job's status is written the
way the controller writes it (the status subresource).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from controller_harness import install_crd, job_manifest, wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "helm" / "kubeclip"


@pytest.fixture(scope="module")
def crd(cluster):
    created = install_crd(cluster.kubectl)
    yield
    if created:
        cluster.kubectl("delete", "crd", "finetunejobs.kubeclip.dev", "--wait=false", check=False)


def _apply(cluster, doc, check=False, dry_run=False):
    extra = ["--dry-run=server"] if dry_run else []
    return cluster.kubectl("apply", *extra, "-f", "-", input=json.dumps(doc), check=check)


def _set_phase(cluster, namespace, name, phase):
    body = {"status": {"phase": phase, "restartCount": 0}}
    cluster.kubectl(
        "patch", "finetunejob", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps(body)
    )


def _patch(cluster, namespace, name, spec):
    return cluster.kubectl(
        "patch", "finetunejob", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}), check=False
    )


def test_the_trainer_part_of_the_spec_is_immutable_while_the_job_runs(cluster, crd, namespace):
    doc = job_manifest("immutable", namespace)
    assert _apply(cluster, doc).returncode == 0
    # Not started yet (no status): anything may change.
    assert _patch(cluster, namespace, "immutable", {"training": {"epochs": 3, "batchSize": 4}}).returncode == 0
    _set_phase(cluster, namespace, "immutable", "Running")
    for change, field in [
        ({"training": {"epochs": 3, "batchSize": 8}}, "spec.training"),
        ({"model": {"name": "local-dir:/data/other"}}, "spec.model"),
        ({"numNodes": 3}, "spec.numNodes"),
    ]:
        out = _patch(cluster, namespace, "immutable", change)
        assert out.returncode != 0 and f"{field} cannot change while the job runs" in out.stderr, out.stderr
    # Lifecycle and cluster keys stay mutable while it runs.
    assert _patch(cluster, namespace, "immutable", {"runPolicy": {"backoffLimit": 5}}).returncode == 0
    assert _patch(cluster, namespace, "immutable", {"runPolicy": {"backoffLimit": 5, "suspend": True}}).returncode == 0
    assert _patch(cluster, namespace, "immutable", {"image": "ghcr.io/kubeclip/kubeclip-trainer:0.2.0"}).returncode == 0
    # Suspended: the trainer part may change again (it takes effect when the pods come back).
    _set_phase(cluster, namespace, "immutable", "Suspended")
    assert _patch(cluster, namespace, "immutable", {"training": {"epochs": 4, "batchSize": 8}}).returncode == 0
    got = json.loads(cluster.kubectl("get", "finetunejob", "immutable", "-n", namespace, "-o", "json").stdout)
    assert got["spec"]["training"] == {"epochs": 4, "batchSize": 8}


def _values(tmp_path: Path, values: dict) -> str:
    path = tmp_path / f"values-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_admission_refuses_host_path_and_service_accounts_unless_the_chart_allows_them(
    cluster, crd, namespace, tmp_path
):
    release = "adm-" + namespace[-6:]
    base = {"crds": {"enabled": False}}  # the CRD is shared with the other tests (installed above)
    cluster.helm("install", release, str(CHART), "-n", namespace, "-f", _values(tmp_path, base))
    try:
        host = job_manifest("hostpath", namespace, volumes=[{"name": "data", "hostPath": {"path": "/var/lib"}}])
        sa = job_manifest("sa", namespace, serviceAccountName="cluster-admin-sa")
        plain = job_manifest("plain", namespace, serviceAccountName="default")

        def refused(doc, text):
            # Server-side dry run: admission runs, nothing is stored, so a probe made before the
            # policy is active cannot create the object (a later plain apply would be a no-op
            # "unchanged" that admission never sees).
            out = _apply(cluster, doc, dry_run=True)
            return out.returncode != 0 and text in out.stderr and out.stderr

        # Policies reach the API server's admission through an informer: allow it a moment.
        wait_for(lambda: refused(host, "hostPath volumes are not allowed here"), 30, 0.5, "hostPath to be refused")
        assert refused(sa, "only the namespace's default ServiceAccount is allowed here")
        assert _apply(cluster, plain).returncode == 0
        # The chart value lets hostPath through; other ServiceAccounts stay refused.
        cluster.helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            namespace,
            "-f",
            _values(tmp_path, {**base, "admission": {"allowHostPath": True}}),
        )
        wait_for(lambda: _apply(cluster, host, dry_run=True).returncode == 0, 30, 0.5, "hostPath to be allowed")
        assert _apply(cluster, host).returncode == 0
        assert refused(sa, "only the namespace's default ServiceAccount is allowed here")
    finally:
        cluster.helm("uninstall", release, "-n", namespace, check=False)
