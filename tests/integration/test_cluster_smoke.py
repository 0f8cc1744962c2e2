"""Smoke tests proving the test control plane is a real Kubernetes API server, not a mock.

Who uses it: anyone changing hack/tools.sh, devkit/ (the local cluster) or the Go pins in hack/go/; a failure
here means every other cluster test is suspect. Each test checks a behaviour mocks get wrong:
CEL validation at create time, label selectors, the status subresource, optimistic concurrency,
RBAC with impersonation, the real kubectl and helm, and garbage collection of owned objects.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.cluster

DATA = Path(__file__).parent / "data"
GROUP, VERSION, PLURAL = "smoke.kubeclip.dev", "v1", "widgets"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["replicas", "maxReplicas"],
                                "properties": {
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer"},
                                    "mode": {"type": "string", "default": "fast"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.replicas <= self.maxReplicas",
                                        "message": "replicas must not exceed maxReplicas",
                                    },
                                ],
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def widgets(cluster):
    """The Widget CRD, installed with kubectl and waited for until Established; removed after."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    with cluster.api_client() as api:
        yield client.CustomObjectsApi(api)
    cluster.kubectl("delete", f"crd/{PLURAL}.{GROUP}", "--wait=false")


def widget(name: str, replicas: int, max_replicas: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "maxReplicas": max_replicas},
    }


def create_widget(api, namespace: str, body: dict) -> dict:
    # the CRD's REST endpoint can lag a moment behind Established on a loaded machine
    for _ in range(50):
        try:
            return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except ApiException as e:
            if e.status != 404:
                raise
            time.sleep(0.2)
    raise AssertionError("widgets endpoint never appeared")


def until_allowed(cluster, call, *, as_user, as_groups=None, within_s: float = 10) -> None:
    """Retry ``call(api)`` while it is denied (403): RBAC informers see new bindings asynchronously."""
    deadline = time.monotonic() + within_s
    while True:
        with cluster.api_client(as_user=as_user, as_groups=as_groups) as api:
            try:
                call(api)
                return
            except ApiException as e:
                if e.status != 403 or time.monotonic() > deadline:
                    raise
        time.sleep(0.2)


def test_cel_rule_rejects_bad_object_at_create_time(widgets, namespace):
    with pytest.raises(ApiException) as err:
        create_widget(widgets, namespace, widget("too-many", replicas=5, max_replicas=2))
    assert err.value.status == 422
    assert "replicas must not exceed maxReplicas" in err.value.body

    ok = create_widget(widgets, namespace, widget("fine", replicas=1, max_replicas=2))
    assert ok["spec"]["mode"] == "fast"  # structural-schema default applied by the server


def test_label_selector_list_returns_only_matching(cluster, namespace):
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        for name, team in (("a", "red"), ("b", "blue"), ("c", "red")):
            core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels={"team": team}))
            )
        red = core.list_namespaced_config_map(namespace, label_selector="team=red")
        not_red = core.list_namespaced_config_map(namespace, label_selector="team,team!=red")
    assert sorted(cm.metadata.name for cm in red.items) == ["a", "c"]
    assert [cm.metadata.name for cm in not_red.items] == ["b"]


def test_status_subresource_update_leaves_spec_alone(widgets, namespace):
    created = create_widget(widgets, namespace, widget("w", replicas=1, max_replicas=3))
    sneaky = dict(created, spec={**created["spec"], "replicas": 3}, status={"phase": "Running"})
    after = widgets.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "w", sneaky)
    assert after["status"] == {"phase": "Running"}
    assert after["spec"]["replicas"] == 1  # spec changes through /status are dropped

    # and the main resource ignores status
    after["spec"]["replicas"] = 2
    after["status"] = {"phase": "Hacked"}
    main = widgets.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "w", after)
    assert main["spec"]["replicas"] == 2
    assert main["status"] == {"phase": "Running"}


def test_stale_resource_version_gets_409(cluster, namespace):
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        cm = core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cas"), data={"n": "0"})
        )
        stale_rv = cm.metadata.resource_version
        cm.data = {"n": "1"}
        fresh = core.replace_namespaced_config_map("cas", namespace, cm)
        assert fresh.metadata.resource_version != stale_rv
        cm.data = {"n": "2"}
        cm.metadata.resource_version = stale_rv
        with pytest.raises(ApiException) as err:
            core.replace_namespaced_config_map("cas", namespace, cm)
        assert err.value.status == 409
        assert core.read_namespaced_config_map("cas", namespace).data == {"n": "1"}


def test_impersonated_service_account_without_rights_is_denied(cluster, namespace):
    sa = f"system:serviceaccount:{namespace}:default"
    with cluster.api_client(as_user=sa) as api, pytest.raises(ApiException) as err:
        client.CoreV1Api(api).list_namespaced_config_map(namespace)
    assert err.value.status == 403
    assert "cannot list resource" in err.value.body

    # control: once RBAC grants it, the same impersonated identity may list (so 403 came from RBAC)
    cluster.kubectl("-n", namespace, "create", "role", "cm-reader", "--verb=list", "--resource=configmaps")
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "cm-reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:default",
    )
    until_allowed(cluster, lambda api: client.CoreV1Api(api).list_namespaced_config_map(namespace), as_user=sa)
    can = cluster.kubectl("-n", namespace, "auth", "can-i", "delete", "configmaps", as_user=sa, check=False)
    assert can.stdout.strip() == "no"


def test_impersonated_groups_reach_the_server(cluster, namespace):
    """Several Impersonate-Group headers arrive as separate groups (RBAC binds to the second one)."""
    cluster.kubectl("-n", namespace, "create", "role", "pod-reader", "--verb=list", "--resource=pods")
    cluster.kubectl("-n", namespace, "create", "rolebinding", "pod-reader", "--role=pod-reader", "--group=readers")
    until_allowed(
        cluster,
        lambda api: client.CoreV1Api(api).list_namespaced_pod(namespace),
        as_user="alice",
        as_groups=["staff", "readers"],
    )
    with cluster.api_client(as_user="alice", as_groups=["staff"]) as api, pytest.raises(ApiException) as err:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
    assert err.value.status == 403


def test_kubectl_apply_with_the_real_binary(cluster, namespace):
    manifest = str(DATA / "smoke-manifest.yaml")
    first = cluster.kubectl("-n", namespace, "apply", "-f", manifest)
    assert "configmap/smoke-applied created" in first.stdout
    again = cluster.kubectl("-n", namespace, "apply", "-f", manifest)
    assert "configmap/smoke-applied unchanged" in again.stdout
    got = json.loads(cluster.kubectl("-n", namespace, "get", "configmap", "smoke-applied", "-o", "json").stdout)
    assert got["data"] == {"key": "value"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]


def test_helm_install_of_a_chart_with_the_real_binary(cluster, namespace):
    cluster.helm("install", "rel", str(DATA / "smoke-chart"), "-n", namespace, "--set", "greeting=hi", "--wait")
    status = json.loads(cluster.helm("status", "rel", "-n", namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    cm = json.loads(cluster.kubectl("-n", namespace, "get", "configmap", "rel-smoke", "-o", "json").stdout)
    assert cm["data"] == {"greeting": "hi"}
    cluster.helm("uninstall", "rel", "-n", namespace, "--wait")
    gone = cluster.kubectl("-n", namespace, "get", "configmap", "rel-smoke", check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_pods_are_creatable_and_tests_can_play_the_kubelet(cluster, namespace):
    """No kubelet runs: a test sets pod status itself through the status subresource."""
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="example.invalid/none")]),
    )
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        created = core.create_namespaced_pod(namespace, pod)
        assert created.spec.service_account_name == "default"  # ServiceAccount admission ran
        assert created.status.phase == "Pending"
        core.patch_namespaced_pod_status("p", namespace, {"status": {"phase": "Succeeded"}})
        assert core.read_namespaced_pod("p", namespace).status.phase == "Succeeded"


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(cluster, namespace):
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        owner = core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
        )
        ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
        core.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref]))
        )
        core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
        deadline = time.monotonic() + 60
        while True:
            try:
                core.read_namespaced_config_map("dependent", namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
                break
            assert time.monotonic() < deadline, "garbage collector did not delete the dependent within 60 s"
            time.sleep(0.2)


def test_restarted_controller_manager_collects_new_crd_children_at_once(cluster, namespace):
    """Children of a custom resource (how FineTuneJobs own their pods) are collected too.

    The collector rediscovers resources only every 30 s, so without the restart the first cascade
    from a CRD created after start took 41 s here (later ones 0.2 s); the 15 s limit below fails then."""
    crd = json.loads(json.dumps(WIDGET_CRD).replace(GROUP, "gc.kubeclip.dev"))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.gc.kubeclip.dev")
    try:
        cluster.restart_controller_manager()
        with cluster.api_client() as api:
            gadgets = client.CustomObjectsApi(api)
            owner = None
            for _ in range(50):
                try:
                    owner = gadgets.create_namespaced_custom_object(
                        "gc.kubeclip.dev",
                        VERSION,
                        namespace,
                        PLURAL,
                        dict(widget("o", 1, 1), apiVersion=f"gc.kubeclip.dev/{VERSION}"),
                    )
                    break
                except ApiException as e:
                    if e.status != 404:
                        raise
                    time.sleep(0.2)
            assert owner is not None
            ref = client.V1OwnerReference(
                api_version=f"gc.kubeclip.dev/{VERSION}", kind="Widget", name="o", uid=owner["metadata"]["uid"]
            )
            core = client.CoreV1Api(api)
            core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="o-child", owner_references=[ref]))
            )
            gadgets.delete_namespaced_custom_object("gc.kubeclip.dev", VERSION, namespace, PLURAL, "o")
            t0 = time.monotonic()
            while True:
                try:
                    core.read_namespaced_config_map("o-child", namespace)
                except ApiException as e:
                    if e.status != 404:
                        raise
                    break
                assert time.monotonic() - t0 < 15, "collector did not pick up the new CRD after the restart"
                time.sleep(0.2)
    finally:
        cluster.kubectl("delete", f"crd/{PLURAL}.gc.kubeclip.dev", "--wait=false")
