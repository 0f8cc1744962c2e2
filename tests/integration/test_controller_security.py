"""The security model on the real API server: what a user who may create FineTuneJobs cannot do.

* admission: the chart's ValidatingAdmissionPolicy (``helm install`` of helm/kubeclip) allows only
  the restricted Pod Security set of volume types: it refuses hostPath, nfs and a projected
  serviceAccountToken volume and a non-default ServiceAccount, and the chart values widen it
  (``helm upgrade``);
* reserved environment: the CRD refuses spec.env names the controller sets or reserves (the
  topology, every ``PET_*`` torchrun flag, every ``KUBECLIP_*`` trainer switch);
* network: a real pass of the worker, as the ServiceAccount bound to the chart's rules, creates the
  job's NetworkPolicy (owned by the job, selecting its pods) with its other children;
* ownership: on an API server running the ``OwnerReferencesPermissionEnforcement`` admission plugin
  (as OpenShift does), the chart's RBAC lets the controller create the children it builds, whose
  ownerReferences carry ``blockOwnerDeletion: true`` (it needs ``finetunejobs/finalizers``);
* immutability: the CRD's CEL transition rules refuse a change of the trainer part of the spec
  while the job runs, and allow it once the job is Suspended; runPolicy and the cluster keys stay
  mutable.

No controller is needed: these are the API server's own checks. The job's status is written the
way the controller writes it (the status subresource); the children are built by the
controller's own builders and created as the chart's ServiceAccount (impersonated).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from controller_harness import controller_kubeconfig

from controller import builders
from devkit.cluster import Cluster
from devkit.controlplane import ControlPlane, client_bin_dir, new_workdir
from devkit.jobs import cluster_job
from devkit.operator import install_crd
from devkit.wait import wait_for
from kubeclip.api import parse_job_spec

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
    doc = cluster_job("immutable", namespace)
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
        assert out.returncode != 0, out.stderr
        assert f"{field} cannot change while the job runs" in out.stderr, out.stderr
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


def test_admission_allows_only_the_restricted_volume_types_unless_the_chart_widens_them(
    cluster, crd, namespace, tmp_path
):
    release = "adm-" + namespace[-6:]
    base = {"crds": {"enabled": False}}  # the CRD is shared with the other tests (installed above)
    cluster.helm("install", release, str(CHART), "-n", namespace, "-f", _values(tmp_path, base))
    mount = [{"name": "data", "mountPath": "/data"}]

    def with_volume(name, volume):
        return cluster_job(name, namespace, volumes=[{"name": "data", **volume}], volumeMounts=mount)

    token = {"projected": {"sources": [{"serviceAccountToken": {"path": "token", "audience": "api"}}]}}
    try:
        host = with_volume("hostpath", {"hostPath": {"path": "/var/lib"}})
        nfs = with_volume("nfs", {"nfs": {"server": "10.0.0.1", "path": "/exports"}})
        sa_token = with_volume("satoken", token)
        sa = cluster_job("sa", namespace, serviceAccountName="cluster-admin-sa")
        allowed = [
            cluster_job("plain", namespace, serviceAccountName="default"),  # a persistentVolumeClaim
            with_volume("scratch", {"emptyDir": {"medium": "Memory"}}),
            with_volume("cm", {"configMap": {"name": "labels"}}),
            with_volume("secret", {"secret": {"secretName": "s3"}}),
            with_volume("proj", {"projected": {"sources": [{"configMap": {"name": "a"}}, {"secret": {"name": "b"}}]}}),
            with_volume("csi", {"csi": {"driver": "blob.csi.azure.com", "volumeAttributes": {"x": "y"}}}),
        ]

        def refused(doc, text):
            # Server-side dry run: admission runs, nothing is stored, so a probe made before the
            # policy is active cannot create the object (a later plain apply would be a no-op
            # "unchanged" that admission never sees).
            out = _apply(cluster, doc, dry_run=True)
            return out.returncode != 0 and text in out.stderr and out.stderr

        # Policies reach the API server's admission through an informer: allow it a moment.
        wait_for(
            lambda: refused(nfs, "spec.volumes: data (nfs): volume type not allowed here"),
            30,
            "nfs refused",
            every_s=0.5,
        )
        assert refused(host, "spec.volumes: data (hostPath): volume type not allowed here")
        assert refused(sa_token, "projected volumes may hold only clusterTrustBundle, configMap, downwardAPI, secret")
        assert refused(sa, "only the namespace's default ServiceAccount is allowed here")
        for doc in allowed:
            out = _apply(cluster, doc)
            assert out.returncode == 0, (doc["metadata"]["name"], out.stderr)
        # The chart values widen it: hostPath, nfs and projected tokens; other ServiceAccounts stay refused.
        widened = {
            **base,
            "admission": {"allowHostPath": True, "extraVolumeTypes": ["nfs"], "allowServiceAccountTokenVolumes": True},
        }
        cluster.helm("upgrade", release, str(CHART), "-n", namespace, "-f", _values(tmp_path, widened))
        wait_for(lambda: _apply(cluster, nfs, dry_run=True).returncode == 0, 30, "nfs to be allowed", every_s=0.5)
        for doc in (host, nfs, sa_token):
            out = _apply(cluster, doc)
            assert out.returncode == 0, (doc["metadata"]["name"], out.stderr)
        assert refused(sa, "only the namespace's default ServiceAccount is allowed here")
    finally:
        cluster.helm("uninstall", release, "-n", namespace, check=False)


@pytest.mark.parametrize(
    "name",
    ["RANK", "MASTER_ADDR", "PET_RDZV_BACKEND", "PET_RDZV_ENDPOINT", "PET_MAX_RESTARTS", "KUBECLIP_PREFLIGHT_DONE"],
)
def test_the_crd_refuses_environment_the_controller_sets_or_reserves(cluster, crd, namespace, name):
    doc = cluster_job("env", namespace, env=[{"name": name, "value": "x"}])
    out = _apply(cluster, doc, dry_run=True)
    assert out.returncode != 0, f"{name} was accepted"
    assert "spec.env: Invalid value" in out.stderr
    assert "set by the controller or reserved for it" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_the_crd_accepts_other_environment(cluster, crd, namespace):
    env = [
        {"name": n, "value": "1"} for n in ("NCCL_DEBUG", "PETS", "KUBECLIPX", "HF_HOME", "TORCH_NCCL_BLOCKING_WAIT")
    ]
    assert _apply(cluster, cluster_job("env-ok", namespace, env=env), dry_run=True).returncode == 0


def test_a_pass_creates_the_jobs_network_policy_with_the_charts_rights(cluster, crd, namespace, tmp_path):
    from kubernetes import config

    from controller.kube import Kube
    from controller.settings import Settings
    from controller.worker import Worker

    system = f"{namespace[:50]}-sys"
    cluster.kubectl("create", "namespace", system)
    try:
        kubeconfig = controller_kubeconfig(cluster, system, tmp_path / "kubeconfig")
        assert _apply(cluster, cluster_job("guarded", namespace)).returncode == 0
        settings = Settings(
            lease_namespace=system,
            controller_pod_labels=(("app.kubernetes.io/name", "kubeclip"),),
            monitoring_namespace="monitoring",
        )
        with config.new_client_from_config(config_file=str(kubeconfig)) as api:
            Worker(Kube(api=api, timeout_s=10), settings).reconcile(namespace, "guarded")
        job = json.loads(cluster.kubectl("get", "finetunejob", "guarded", "-n", namespace, "-o", "json").stdout)
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        assert len(pods) == 2, "the pass did not create the pods"
        np = json.loads(cluster.kubectl("get", "networkpolicy", "guarded", "-n", namespace, "-o", "json").stdout)
        assert np["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        selector = np["spec"]["podSelector"]["matchLabels"]
        assert all(selector.items() <= p["metadata"]["labels"].items() for p in pods)
        peers = [rule["from"][0] for rule in np["spec"]["ingress"]]
        assert {"podSelector": {"matchLabels": selector}} in peers
    finally:
        cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)


# -- OwnerReferencesPermissionEnforcement -----------------------------------------------------------

OWNER_PLUGIN = "OwnerReferencesPermissionEnforcement"


@pytest.fixture(scope="module")
def enforcing():
    """A second API server (no controller manager) running OwnerReferencesPermissionEnforcement."""
    cp = ControlPlane(new_workdir(), owned=True, controller_manager=False, admission_plugins=(OWNER_PLUGIN,))
    cp.start()
    try:
        yield Cluster(kubeconfig=str(cp.kubeconfig), server=cp.server, bin=str(client_bin_dir()), control_plane=cp)
    finally:
        cp.stop()


def test_the_charts_rbac_creates_children_that_block_owner_deletion(enforcing, tmp_path):
    """The children's ownerReferences carry blockOwnerDeletion: true; under the plugin setting it
    needs update on finetunejobs/finalizers: with the chart's rules every create succeeds, without
    that one rule each is refused."""
    c = enforcing
    jobs, system, release = "jobs", "kubeclip-system", "kc"
    for ns in (jobs, system):
        c.kubectl("create", "namespace", ns)
    c.kubectl("create", "serviceaccount", "default", "-n", jobs)  # no controller manager to make it
    values = {"watch": {"namespaces": [jobs]}, "admission": {"enabled": False}}
    c.helm("install", release, str(CHART), "-n", system, "-f", _values(tmp_path, values))
    c.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.kubeclip.dev", "--timeout=60s")
    controller = f"system:serviceaccount:{system}:{release}-kubeclip"  # the chart's ServiceAccount

    def children(name):
        assert _apply(c, cluster_job(name, jobs), check=True).returncode == 0
        job = json.loads(c.kubectl("get", "finetunejob", name, "-n", jobs, "-o", "json").stdout)
        spec = parse_job_spec(job["spec"])
        objs = [builders.configmap(job), builders.service(job, spec), builders.pod(job, spec, 0, 0, "img:1")]
        assert all(o["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True for o in objs)
        return objs

    def create(obj):
        return c.kubectl("create", "-f", "-", input=json.dumps(obj), as_user=controller, check=False)

    for obj in children("with-rule"):
        out = create(obj)
        assert out.returncode == 0, (obj["kind"], out.stderr)

    # The same rules less finetunejobs/finalizers: each create is a 403 naming blockOwnerDeletion.
    role = json.loads(c.kubectl("get", "role", f"{release}-kubeclip", "-n", jobs, "-o", "json").stdout)
    kept = [r for r in role["rules"] if "finetunejobs/finalizers" not in r.get("resources", [])]
    assert len(kept) == len(role["rules"]) - 1
    c.kubectl("apply", "-f", "-", input=json.dumps({**role, "rules": kept}))
    objs = children("without-rule")
    wait_for(lambda: "blockOwnerDeletion" in create(objs[0]).stderr, 30, "the 403 without the rule", every_s=0.5)
    for obj in objs[1:]:
        out = create(obj)
        assert out.returncode != 0, (obj["kind"], out.stderr)
        assert "cannot set blockOwnerDeletion" in out.stderr, (obj["kind"], out.stderr)
