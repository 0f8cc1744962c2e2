"""The Helm chart (helm/kubeclip): linted, rendered, validated, and installed for real.

Who uses it: ``make test``. The chart is how people meet kubeclip, so every path of it is
exercised with the real binaries (helm, promtool, kubectl from ``$KUBECLIP_TOOLS/bin``):

* ``helm lint --strict`` and ``helm template`` for several value sets (default, namespaced,
  everything on, external ServiceAccount without CRDs, maximal name lengths);
* every rendered built-in object passes ``kubernetes-validate --strict`` (the oldest supported
  Kubernetes and the newest); ServiceMonitor/PodMonitor/PrometheusRule — which it has no schema
  for — are validated against the Prometheus Operator's own CRDs (from its Go module, fetched
  through the Go module proxy), and the alert rules by ``promtool check rules`` and
  ``promtool test rules`` (the alerts fire, and only, when they should);
* values.yaml is fully documented and values.schema.json closes every object (typos fail);
* the controller Deployment's arguments are accepted by the real ``kubeclip operator`` parser;
* ``helm install`` + ``helm upgrade`` + ``helm uninstall`` against the real kube-apiserver: CRD
  established and explainable, RBAC scoped as promised (checked with ``kubectl auth can-i`` as
  the controller's ServiceAccount), monitors accepted by the server, CRD kept after uninstall.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import crd_jsonschema  # tests/crd_jsonschema.py: pytest puts tests/ first on the import path for tests/conftest.py
import kubernetes_validate
import pytest
import yaml

from devkit.controlplane import find_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubeclip"

CRD_NAME = "finetunejobs.kubeclip.dev"
MONITORING = {"ServiceMonitor": "servicemonitors", "PodMonitor": "podmonitors", "PrometheusRule": "prometheusrules"}
# The Prometheus Operator release whose CRDs validate our monitors (a Go module, so the Go proxy serves it).
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

ALL_ON = {
    "replicaCount": 2,
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "dashboard": {"enabled": True},
    "image": {"digest": "sha256:" + "a" * 64},
}
VALUE_SETS = {
    "default": {},
    "namespaced": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "all-on": ALL_ON,
    "external-sa-no-crds": {
        "crds": {"enabled": False},
        "serviceAccount": {"create": False, "name": "ops"},
        "rbac": {"create": False},
        "leaderElection": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
    },
    "long-names": {**ALL_ON, "fullnameOverride": "x" * 63},
}


# ----------------------------------------------------------------------------- helpers


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(find_binary("helm")), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def values_file(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(tmp_path: Path, values: dict, release: str = "kc", namespace: str = "kubeclip-system") -> list[dict]:
    out = helm("template", release, str(CHART), "-n", namespace, "-f", str(values_file(tmp_path, values))).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@lru_cache(maxsize=1)
def prometheus_operator_crds() -> dict[str, dict]:
    """{kind: CRD} of ServiceMonitor, PodMonitor, PrometheusRule from the operator's Go module."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", PROMETHEUS_OPERATOR], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = Path(json.loads(proc.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    return {
        kind: yaml.safe_load((folder / f"monitoring.coreos.com_{plural}.yaml").read_text())
        for kind, plural in MONITORING.items()
    }


def rules_of(docs: list[dict]) -> dict:
    (rule,) = by_kind(docs, "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


# ----------------------------------------------------------------------------- lint, render, validate


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(tmp_path, name):
    out = helm("lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, VALUE_SETS[name])))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_validate(tmp_path, name):
    docs = render(tmp_path, VALUE_SETS[name])
    assert by_kind(docs, "Deployment"), "no controller Deployment rendered"
    for doc in docs:
        kind = doc["kind"]
        if kind in MONITORING:
            errors = crd_jsonschema.errors(prometheus_operator_crds()[kind], doc)
            assert errors == [], f"{kind}: {errors}"
        else:
            for version in ("1.30.0", kubernetes_validate.latest_version()):
                kubernetes_validate.validate(doc, version, strict=True)
        for key in ("name", "namespace"):
            value = doc["metadata"].get(key, "")
            assert len(value) <= 63, f"{kind} {key} {value!r} is longer than 63 characters"
        for label, value in doc["metadata"].get("labels", {}).items():
            assert len(str(value)) <= 63, (
                label,
                value,
            )
            assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]?", str(value)), (
                label,
                value,
            )


def test_monitor_validation_can_fail(tmp_path):
    """The Prometheus Operator schema check above does reject a malformed monitor."""
    (monitor,) = by_kind(render(tmp_path, ALL_ON), "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "every minute"
    monitor["spec"]["selektor"] = {}
    found = " ".join(crd_jsonschema.errors(prometheus_operator_crds()["PodMonitor"], monitor))
    assert "selektor" in found
    assert "interval" in found


def test_schema_rejects_unknown_and_mistyped_values(tmp_path):
    for bad in (
        {"replicas": 2},
        {"metrics": {"serviceMonitor": {"enabeld": True}}},
        {"replicaCount": "two"},
        {"image": {"pullPolicy": "Sometimes"}},
        {"watch": {"namespaces": ["Not_A_Namespace"]}},
    ):
        proc = helm("template", "kc", str(CHART), "-f", str(values_file(tmp_path, bad)), check=False)
        assert proc.returncode != 0, (bad, proc.stderr)
        assert "schema" in proc.stderr, (bad, proc.stderr)


def test_schema_closes_every_object():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(path)
        if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
            # Only Kubernetes-typed pass-through objects (validated by the API server) may stay open.
            assert "Kubernetes" in node.get("description", "") or path == "global", f"{path} is an open object"
        for key, child in node.get("properties", {}).items():
            walk(child, key if path == "" else f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            walk(node.get(key), f"{path}[]")

    walk(schema, "")
    assert open_objects == [], f"objects without additionalProperties: false: {open_objects}"


# Schema options that deliberately have no default in values.yaml: Helm's `global`, the inner
# keys of Kubernetes types (accepted so users can set them, documented by Kubernetes), and
# securityContext fields the restricted defaults do not need.
NO_DEFAULT = (
    "global",
    "affinity.",
    "extraEnv",
    "podSecurityContext.fsGroupChangePolicy",
    "podSecurityContext.supplementalGroups",
    "podSecurityContext.seccompProfile.localhostProfile",
    "containerSecurityContext.runAsUser",
    "containerSecurityContext.runAsGroup",
    "containerSecurityContext.privileged",
    "containerSecurityContext.seccompProfile",
    "containerSecurityContext.capabilities.add",
)


def _value_keys_with_comment() -> dict[str, bool]:
    """{dotted key: has a comment right above it} for every mapping key of values.yaml."""
    stack: list[tuple[int, str]] = []
    keys = {}
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(\s|$)", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            dotted = ".".join([k for _, k in stack] + [m.group(2)])
            keys[dotted] = previous.lstrip().startswith("#")
            stack.append((indent, m.group(2)))
        if line.strip():
            previous = line
    return keys


def test_every_value_is_documented_and_in_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def declared(dotted: str) -> bool | None:
        """True: an option of the schema; False: an entry of a free-form map; None: unknown."""
        node = schema
        for part in dotted.split("."):
            if part in node.get("properties", {}):
                node = node["properties"][part]
            elif isinstance(node.get("additionalProperties"), dict):
                return False
            else:
                return None
        return True

    keys = _value_keys_with_comment()
    assert len(keys) > 60
    for dotted, commented in keys.items():
        kind = declared(dotted)
        assert kind is not None, f"values.yaml key {dotted} is not in values.schema.json"
        if kind:
            assert commented, f"values.yaml key {dotted} has no comment above it"

    # And every option of the schema has a default in values.yaml (so it is documented there).
    def options(node, prefix=""):
        for key, child in node.get("properties", {}).items():
            yield prefix + key
            yield from options(child, prefix + key + ".")

    missing = [o for o in options(schema) if o not in keys and not o.startswith(NO_DEFAULT)]
    assert missing == [], f"schema options without a documented default in values.yaml: {missing}"


def test_chart_readme_lists_every_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def leaves(node, prefix=""):
        for key, value in node.items():
            if (
                isinstance(value, dict)
                and value
                and key not in ("labels", "annotations")
                and prefix + key not in ("resources.requests", "resources.limits", "dashboard.labels")
            ):
                yield from leaves(value, prefix + key + ".")
            else:
                yield prefix + key

    missing = [k for k in leaves(values) if f"| `{k}` |" not in readme]
    assert missing == [], f"helm/kubeclip/README.md does not document: {missing}"


def test_controller_deployment(tmp_path):
    docs = render(tmp_path, {"watch": {"namespaces": ["team-a"]}, "logLevel": "debug"})
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "operator"
    assert "--namespace=team-a" in args
    assert "--all-namespaces" not in args
    assert {
        "--metrics-port=8080",
        "--health-port=8081",
        "--leader-election",
        "--lease-namespace=kubeclip-system",
    } <= set(args)
    # The real CLI accepts exactly these arguments (click rejects unknown options before --help).
    kubeclip = Path(sys.executable).parent / "kubeclip"
    proc = subprocess.run([str(kubeclip), *args, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    sc, psc = container["securityContext"], pod["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"]
    assert psc["runAsUser"] == 1000
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_crd_template_is_the_generated_crd_with_keep_policy(tmp_path):
    generated = yaml.safe_load((CHART / "files" / "crd-finetunejobs.yaml").read_text())
    (crd,) = by_kind(render(tmp_path, {}), "CustomResourceDefinition")
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["name"] == CRD_NAME
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (crd,) = by_kind(render(tmp_path, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert by_kind(render(tmp_path, {"crds": {"enabled": False}}), "CustomResourceDefinition") == []


def test_rbac_rules_come_from_the_controller_file(tmp_path):
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    sa = [{"kind": "ServiceAccount", "name": "kc-kubeclip", "namespace": "kubeclip-system"}]
    cluster = render(tmp_path, {})
    roles = {r["metadata"]["name"]: r for r in by_kind(cluster, "ClusterRole")}
    assert roles["kc-kubeclip"]["rules"] == rules["namespaced"]
    assert roles["kc-kubeclip-nodes"]["rules"] == rules["cluster"]
    assert all(b["subjects"] == sa for b in by_kind(cluster, "ClusterRoleBinding"))
    # The Lease: a Role in the release namespace only, get/update by name, in both modes.
    (lease,) = by_kind(cluster, "Role")
    assert (lease["metadata"]["name"], lease["metadata"]["namespace"]) == ("kc-kubeclip-leader", "kubeclip-system")
    assert lease["rules"] == [rules["lease"][0], {**rules["lease"][1], "resourceNames": ["kc-kubeclip-leader"]}]
    assert not any("leases" in r["resources"] for r in rules["namespaced"] + rules["cluster"])
    namespaced = render(tmp_path, {"watch": {"namespaces": ["team-a", "team-b"]}})
    assert [r["metadata"]["name"] for r in by_kind(namespaced, "ClusterRole")] == ["kc-kubeclip-nodes"]
    ns_roles = sorted((r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(namespaced, "Role"))
    assert ns_roles == [("kubeclip-system", "kc-kubeclip-leader"), ("team-a", "kc-kubeclip"), ("team-b", "kc-kubeclip")]
    assert all(
        r["rules"] == rules["namespaced"] for r in by_kind(namespaced, "Role") if r["metadata"]["name"] == "kc-kubeclip"
    )
    assert len(by_kind(namespaced, "RoleBinding")) == 3
    assert not by_kind(render(tmp_path, {"leaderElection": {"enabled": False}}), "Role")


def test_admission_policy_follows_the_values(tmp_path):
    def policy(values):
        docs = render(tmp_path, values)
        policies, bindings = (
            by_kind(docs, "ValidatingAdmissionPolicy"),
            by_kind(docs, "ValidatingAdmissionPolicyBinding"),
        )
        assert len(policies) == len(bindings) <= 1
        if not policies:
            return None
        assert bindings[0]["spec"] == {"policyName": policies[0]["metadata"]["name"], "validationActions": ["Deny"]}
        assert policies[0]["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["finetunejobs"]
        return "\n".join(v["expression"] for v in policies[0]["spec"]["validations"])

    restricted = (
        "'configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret'"
    )
    default = policy({})
    assert f"['name', {restricted}]" in default  # an allow-list: the volume's name, then its one type
    assert "['clusterTrustBundle', 'configMap', 'downwardAPI', 'secret']" in default  # projected sources
    assert "serviceAccountName" in default
    assert "hostPath" not in default
    assert "nfs" not in default
    assert "'hostPath'" in policy({"admission": {"allowHostPath": True}})
    assert "'nfs'" in policy({"admission": {"extraVolumeTypes": ["nfs"]}})
    assert "'serviceAccountToken'" in policy({"admission": {"allowServiceAccountTokenVolumes": True}})
    assert "serviceAccountName" not in policy({"admission": {"allowServiceAccounts": True}})
    assert "'csi'" not in policy({"admission": {"allowedVolumeTypes": ["persistentVolumeClaim"]}})
    assert policy({"admission": {"enabled": False}}) is None
    # The pod fields a job author sets: refused until the values list names (``"*"``: any).
    fields = ["schedulerName", "runtimeClassName", "podLabels", "podAnnotations"]
    assert all(f"object.spec.{f}" in default for f in fields)
    assert default.count(" in []") == 4
    everything = {
        "allowedSchedulerNames": ["*"],
        "allowedRuntimeClassNames": ["*"],
        "allowedPodLabelKeys": ["*"],
        "allowedPodAnnotationKeys": ["*"],
    }
    assert not any(f"object.spec.{f}" in policy({"admission": everything}) for f in fields)
    listed = policy({"admission": {"allowedSchedulerNames": ["volcano"], "allowedPodLabelKeys": ["cost-center"]}})
    assert "object.spec.schedulerName in ['volcano']" in listed
    assert "k in ['cost-center']" in listed
    # Type names are letters only (they land in CEL string literals).
    bad = helm(
        "template",
        "kc",
        str(CHART),
        "-f",
        str(values_file(tmp_path, {"admission": {"extraVolumeTypes": ["x'y"]}})),
        check=False,
    )
    assert bad.returncode != 0
    assert "extraVolumeTypes" in bad.stderr


def test_kueue_rbac_follows_the_value(tmp_path):
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    off, on = render(tmp_path, {}), render(tmp_path, {"kueue": {"enabled": True}})
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(on, "ClusterRole")}
    assert roles["kc-kubeclip"] == rules["namespaced"] + rules["kueue"]
    assert roles["kc-kubeclip-nodes"] == rules["cluster"] + rules["kueueCluster"]
    assert not any("kueue.x-k8s.io" in str(r["rules"]) for r in by_kind(off, "ClusterRole"))
    assert {"workloads/status", "workloads/finalizers"} <= {res for r in rules["kueue"] for res in r["resources"]}


def test_network_policy_is_the_controllers_per_job_policy_on_by_default(tmp_path):
    """The chart ships no NetworkPolicy of its own: it tells the controller (env) to create one per
    job (controller/netpol.py), which lets in the job's pods, the monitoring namespace and the
    controller's pods — the labels passed here are the Deployment's own."""

    def env(values):
        (dep,) = by_kind(render(tmp_path, values), "Deployment")
        container = dep["spec"]["template"]["spec"]["containers"][0]
        return dep, {e["name"]: e.get("value") for e in container["env"]}

    dep, default = env({})
    assert not by_kind(render(tmp_path, {}), "NetworkPolicy")
    assert default["KUBECLIP_NETWORK_POLICY"] == "1"
    assert default["KUBECLIP_MONITORING_NAMESPACE"] == "monitoring"
    labels = json.loads(default["KUBECLIP_CONTROLLER_POD_LABELS"])
    assert labels
    assert labels.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    _, off = env({"networkPolicy": {"enabled": False, "monitoringNamespace": "prom"}})
    assert off["KUBECLIP_NETWORK_POLICY"] == "0"
    assert off["KUBECLIP_MONITORING_NAMESPACE"] == "prom"


def test_monitors_target_the_contract_ports(tmp_path):
    docs = render(tmp_path, ALL_ON)
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "prom"
    (pm,) = by_kind(docs, "PodMonitor")
    sel = pm["spec"]["selector"]
    assert sel["matchLabels"] == {"kubeclip.dev/node-index": "0"}
    assert sel["matchExpressions"] == [{"key": "kubeclip.dev/job-name", "operator": "Exists"}]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # finished pods are not targets (a failed job's kept pods would read as a stalled trainer)
    assert {"sourceLabels": ["__meta_kubernetes_pod_phase"], "regex": "Failed|Succeeded", "action": "drop"} in pm[
        "spec"
    ]["podMetricsEndpoints"][0]["relabelings"]
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["kubeclip.json"]) == json.loads((CHART / "dashboards" / "kubeclip.json").read_text())


def test_podmonitor_selects_the_pods_the_controller_builds(tmp_path):
    """The PodMonitor's selector and port name match node 0 of a real job, as built by the controller."""
    from controller import builders
    from kubeclip.api import FineTuneJobSpec

    job = yaml.safe_load((ROOT / "examples" / "finetune-multinode.yaml").read_text())
    job["metadata"].update(namespace="ml", uid="0000")
    spec = FineTuneJobSpec.model_validate(job["spec"])
    (pm,) = by_kind(render(tmp_path, ALL_ON), "PodMonitor")
    selector = pm["spec"]["selector"]
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    for index in range(spec.numNodes):
        pod = builders.pod(job, spec, index, 0, "trainer:test")
        labels = pod["metadata"]["labels"]
        selected = all(labels.get(k) == v for k, v in selector["matchLabels"].items()) and all(
            e["key"] in labels for e in selector["matchExpressions"]
        )
        assert selected == (index == 0), f"node {index}: selected={selected}"
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert ports.get(port) == spec.metrics.port


def test_alert_rules_pass_promtool_check(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules_of(render(tmp_path, ALL_ON))))
    proc = subprocess.run([str(find_binary("promtool")), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout, proc.stdout + proc.stderr


# Synthetic series (1 sample per minute) and the alerts they must, and must not, raise.
RULE_TESTS = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                # "stuck" advances for 10 minutes, then stays at step 100 of 1000 while rank 0 answers scrapes.
                {
                    "series": 'kubeclip_trainer_step{finetunejob="stuck",namespace="ml",pod="stuck-node-0"}',
                    "values": "0+10x10 100x60",
                },
                {
                    "series": 'kubeclip_trainer_total_steps{finetunejob="stuck",namespace="ml",pod="stuck-node-0"}',
                    "values": "1000x70",
                },
                {"series": 'up{job="PODMONITOR_JOB",namespace="ml",pod="stuck-node-0"}', "values": "1x70"},
                # "frozen": rank 0 stops answering scrapes after 10 minutes (SIGSTOP), its pod still exists,
                # so its series go stale: only the `up` branch can see it.
                {
                    "series": 'kubeclip_trainer_step{finetunejob="frozen",namespace="ml",pod="frozen-node-0"}',
                    "values": "0+10x10 _x60",
                },
                {
                    "series": 'kubeclip_trainer_total_steps{finetunejob="frozen",namespace="ml",pod="frozen-node-0"}',
                    "values": "1000x10 _x60",
                },
                {"series": 'up{job="PODMONITOR_JOB",namespace="ml",pod="frozen-node-0"}', "values": "1x10 0x60"},
                # "finished": its node 0 completed, so it is no longer a target (no series at all).
                {"series": 'up{job="PODMONITOR_JOB",namespace="ml",pod="finished-node-0"}', "values": "1x10 _x60"},
                {"series": 'up{job="PODMONITOR_JOB",namespace="ml",pod="healthy-node-0"}', "values": "1x70"},
                # "pulling": node 0's pod exists but has never answered (its image is still being pulled,
                # ImagePullBackOff): waiting, not stalled.
                {"series": 'up{job="PODMONITOR_JOB",namespace="ml",pod="pulling-node-0"}', "values": "0x70"},
                # "done" reached its last step: not stalled.
                {"series": 'kubeclip_trainer_step{finetunejob="done",namespace="ml"}', "values": "0+100x10 1000x60"},
                {"series": 'kubeclip_trainer_total_steps{finetunejob="done",namespace="ml"}', "values": "1000x70"},
                # "healthy" keeps going with a finite loss.
                {"series": 'kubeclip_trainer_step{finetunejob="healthy",namespace="ml"}', "values": "0+10x70"},
                {"series": 'kubeclip_trainer_total_steps{finetunejob="healthy",namespace="ml"}', "values": "1000x70"},
                {"series": 'kubeclip_trainer_loss{finetunejob="healthy",namespace="ml"}', "values": "2-0.01x70"},
                {
                    "series": 'kubeclip_trainer_loss{finetunejob="nan",namespace="ml"}',
                    "values": "1 1 NaN NaN NaN NaN NaN NaN NaN NaN",
                },
                {
                    "series": 'kubeclip_trainer_loss{finetunejob="inf",namespace="ml"}',
                    "values": "1 1 Inf Inf Inf Inf Inf Inf Inf Inf",
                },
                {"series": "kubeclip_controller_jobs_failed_total", "values": "0x10 1x60"},
                # a reason seen for the first time: its series starts at 1 (increase() alone misses it)
                {"series": 'kubeclip_controller_jobs_failed_total{reason="Evicted"}', "values": "_x20 1x50"},
                {"series": "kubeclip_controller_jobs_restarted_total", "values": "0x5 1 2 3 4 5x60"},
                {"series": 'kubeclip_controller_reconcile_errors_total{pod="ctl-0"}', "values": "0x70"},
                # "forgets": retention R@1 falls from its 0.30 baseline to 0.20 after 10 minutes (drop 0.10 > 0.05);
                # "keeps" loses 0.02 only; "zs" loses 0.2 of zero-shot top-1 from the start.
                {
                    "series": 'kubeclip_trainer_baseline_recall{finetunejob="forgets",namespace="ml",set="retention",direction="image_to_text",k="1"}',
                    "values": "0.3x70",
                },
                {
                    "series": 'kubeclip_trainer_eval_recall{finetunejob="forgets",namespace="ml",set="retention",direction="image_to_text",k="1"}',
                    "values": "0.3x10 0.2x60",
                },
                {
                    "series": 'kubeclip_trainer_baseline_recall{finetunejob="keeps",namespace="ml",set="retention",direction="image_to_text",k="1"}',
                    "values": "0.3x70",
                },
                {
                    "series": 'kubeclip_trainer_eval_recall{finetunejob="keeps",namespace="ml",set="retention",direction="image_to_text",k="1"}',
                    "values": "0.3x10 0.28x60",
                },
                {
                    "series": 'kubeclip_trainer_baseline_zeroshot_accuracy{finetunejob="zs",namespace="ml",k="1"}',
                    "values": "0.6x70",
                },
                {
                    "series": 'kubeclip_trainer_zeroshot_accuracy{finetunejob="zs",namespace="ml",k="1"}',
                    "values": "0.6x20 0.4x50",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "KubeclipTrainingStalled", "exp_alerts": []},
                {
                    "eval_time": "50m",
                    "alertname": "KubeclipTrainingStalled",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "finetunejob": "stuck",
                                "namespace": "ml",
                                "pod": "stuck-node-0",
                            }
                        },
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "finetunejob": "frozen",
                                "namespace": "ml",
                                "pod": "frozen-node-0",
                                "job": "PODMONITOR_JOB",
                            }
                        },
                    ],
                },
                {"eval_time": "1m", "alertname": "KubeclipLossNotFinite", "exp_alerts": []},
                {
                    "eval_time": "8m",
                    "alertname": "KubeclipLossNotFinite",
                    "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "finetunejob": "nan", "namespace": "ml"}},
                        {"exp_labels": {"severity": "critical", "finetunejob": "inf", "namespace": "ml"}},
                    ],
                },
                {"eval_time": "5m", "alertname": "KubeclipJobFailed", "exp_alerts": []},
                {
                    "eval_time": "12m",
                    "alertname": "KubeclipJobFailed",
                    "exp_alerts": [{"exp_labels": {"severity": "critical"}}],
                },
                {
                    "eval_time": "27m",
                    "alertname": "KubeclipJobFailed",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "reason": "Evicted"}}],
                },
                {"eval_time": "45m", "alertname": "KubeclipJobFailed", "exp_alerts": []},
                {"eval_time": "4m", "alertname": "KubeclipJobRestarting", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "KubeclipJobRestarting",
                    "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                },
                {"eval_time": "60m", "alertname": "KubeclipReconcileErrors", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "KubeclipForgetting", "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": "KubeclipForgetting",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "finetunejob": "forgets",
                                "namespace": "ml",
                                "set": "retention",
                                "direction": "image_to_text",
                                "k": "1",
                            }
                        }
                    ],
                },
                {
                    "eval_time": "30m",
                    "alertname": "KubeclipForgetting",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "finetunejob": "forgets",
                                "namespace": "ml",
                                "set": "retention",
                                "direction": "image_to_text",
                                "k": "1",
                            }
                        },
                        {"exp_labels": {"severity": "warning", "finetunejob": "zs", "namespace": "ml", "k": "1"}},
                    ],
                },
            ],
        }
    ],
}


def test_alerts_fire_when_and_only_when_they_should(tmp_path):
    docs = render(tmp_path, ALL_ON)
    rules = rules_of(docs)
    (pm,) = by_kind(docs, "PodMonitor")  # the Prometheus Operator names a PodMonitor's targets' job "<ns>/<name>"
    pm_job = f"{pm['metadata']['namespace']}/{pm['metadata']['name']}"
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")  # their templates are checked by `promtool check rules` above
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(RULE_TESTS).replace("PODMONITOR_JOB", pm_job))
    proc = subprocess.run(
        [str(find_binary("promtool")), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- the real API server


def _adopt_existing_crd(cluster, release: str, namespace: str) -> None:
    """Other tests apply the same CRD; let this release adopt it the way Helm allows."""
    if cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0:
        cluster.kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate",
            "--overwrite",
            "crd",
            CRD_NAME,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )


def _can(cluster, sa: str, verb: str, resource: str, namespace: str | None, subresource: str = "") -> bool:
    where = ["-n", namespace] if namespace else ["-A"]
    sub = [f"--subresource={subresource}"] if subresource else []
    out = cluster.kubectl("auth", "can-i", verb, resource, *sub, *where, f"--as={sa}", check=False)
    return out.stdout.strip() == "yes"


@pytest.mark.cluster
def test_install_upgrade_uninstall(cluster, namespace, tmp_path):
    for crd in prometheus_operator_crds().values():
        cluster.kubectl(
            "apply", "--server-side", "--field-manager=kubeclip-chart-test", "-f", "-", input=yaml.safe_dump(crd)
        )
    release = "kc-" + namespace[-6:]
    fullname = f"{release}-kubeclip"
    sa = f"system:serviceaccount:{namespace}:{fullname}"
    _adopt_existing_crd(cluster, release, namespace)
    # Chart.yaml's kubeVersion (>=1.30) is checked against the server's /version.
    server = json.loads(cluster.kubectl("version", "-o", "json", check=False).stdout)["serverVersion"]["gitVersion"]
    assert not server.startswith("v0.0.0"), (
        f"the test kube-apiserver reports {server}: hack/tools.sh must stamp its version, e.g. go build -ldflags "
        "'-X k8s.io/component-base/version.gitVersion=v1.34.4 -X k8s.io/component-base/version.gitMajor=1 "
        "-X k8s.io/component-base/version.gitMinor=34'"
    )

    installed = cluster.helm("install", release, str(CHART), "-n", namespace)
    assert "kubectl get ftj -w" in installed.stdout, "NOTES.txt does not show the next commands"
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    # A fresh discovery cache each try (kubectl caches discovery from before the CRD existed), and
    # a few seconds of grace: the API server publishes a new CRD's OpenAPI asynchronously.
    deadline = time.monotonic() + 60
    while True:
        explained = cluster.kubectl(
            "--cache-dir", str(tmp_path / f"kcache-{time.monotonic_ns()}"), "explain", "ftj.spec", check=False
        )
        if explained.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert explained.returncode == 0, explained.stderr
    assert "numProcPerNode" in explained.stdout
    assert "model" in explained.stdout
    dep = json.loads(cluster.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == fullname
    assert "--all-namespaces" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    cluster.kubectl("get", "serviceaccount", fullname, "-n", namespace)
    # No kubelet here, so no pod ever runs; still, the controller's pod spec must pass the
    # restricted Pod Security Standard: dry-run a Pod made from the Deployment's template.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    template = dep["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "controller-pod-check", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod))
    cluster.kubectl("get", "clusterrole,clusterrolebinding", fullname)
    # Cluster-wide mode: the controller may manage jobs and pods everywhere, and nothing more.
    assert _can(cluster, sa, "watch", "finetunejobs.kubeclip.dev", None)
    assert _can(cluster, sa, "create", "pods", "default")
    assert _can(cluster, sa, "update", "finetunejobs.kubeclip.dev", namespace, subresource="status")
    assert not _can(cluster, sa, "get", "secrets", namespace)
    assert not _can(cluster, sa, "update", "finetunejobs.kubeclip.dev", namespace)
    # Nodes: read by name only. The Lease: its own, in its own namespace only.
    assert _can(cluster, sa, "get", "nodes", None)
    assert not _can(cluster, sa, "list", "nodes", None)
    assert _can(cluster, sa, "update", f"leases.coordination.k8s.io/{fullname}-leader", namespace)
    assert not _can(cluster, sa, "update", "leases.coordination.k8s.io/kube-scheduler", namespace)
    assert not _can(cluster, sa, "update", f"leases.coordination.k8s.io/{fullname}-leader", "default")

    # Upgrade: namespaced mode, two replicas, every monitor on (the server validates them).
    values = values_file(tmp_path, {**ALL_ON, "watch": {"namespaces": [namespace]}})
    cluster.helm("upgrade", release, str(CHART), "-n", namespace, "-f", str(values))
    dep = json.loads(cluster.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 2
    assert f"--namespace={namespace}" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cluster.kubectl("get", "clusterrole", fullname, check=False).returncode != 0, (
        "ClusterRole left after switching to namespaced mode"
    )
    cluster.kubectl("get", "role,rolebinding", fullname, "-n", namespace)
    assert _can(cluster, sa, "watch", "finetunejobs.kubeclip.dev", namespace)
    assert _can(cluster, sa, "create", "leases.coordination.k8s.io", namespace)
    assert not _can(cluster, sa, "watch", "finetunejobs.kubeclip.dev", "default")
    for kind in MONITORING:
        cluster.kubectl("get", kind.lower(), "-n", namespace, "-o", "name")
    names = cluster.kubectl(
        "get", "servicemonitor,podmonitor,prometheusrule,configmap", "-n", namespace, "-o", "name"
    ).stdout
    assert all(
        s in names for s in ("servicemonitor", "podmonitor", "prometheusrule", f"configmap/{fullname}-dashboard")
    ), names

    cluster.helm("uninstall", release, "-n", namespace)
    assert cluster.kubectl("get", "deployment", fullname, "-n", namespace, check=False).returncode != 0
    assert cluster.kubectl("get", "role", fullname, "-n", namespace, check=False).returncode != 0
    kept = json.loads(cluster.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", "crds.keep did not keep the CRD"
