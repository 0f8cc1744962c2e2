"""Every shipped example is valid, checked the ways a user's cluster would check it.

Who uses it: ``make test``. Examples are the first thing people copy, and the CRD, the
controller's model and the trainer's config all evolve; this keeps the examples honest:

* each FineTuneJob validates against the generated CRD's openAPIV3Schema
  (helm/kubeclip/files/crd-finetunejobs.yaml, unknown fields rejected), against the controller's
  model (``kubeclip.api.FineTuneJobSpec``, which mirrors the CRD's CEL rules) and against the
  trainer's ``kubeclip.api.parse_spec``;
* every other object (PVC, Pod) passes ``kubernetes-validate --strict``;
* on the real API server, ``kubectl apply --dry-run=server`` accepts every document, which also
  runs the CRD's CEL rules and admission.
"""

from __future__ import annotations

from pathlib import Path

import crd_jsonschema  # tests/crd_jsonschema.py: pytest puts tests/ first on the import path for tests/conftest.py
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
CRD_FILE = ROOT / "helm" / "kubeclip" / "files" / "crd-finetunejobs.yaml"

# The examples this repository promises (README, issue #5); a missing one is a failure.
PROMISED = {"finetune-minimal.yaml", "finetune-multinode.yaml", "dataset-pvc.yaml", "local-cpu.yaml"}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def jobs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in EXAMPLES for d in documents(p) if d.get("kind") == "FineTuneJob"]


def crd() -> dict:
    assert CRD_FILE.exists(), f"{CRD_FILE} missing: run `make crd`"
    return yaml.safe_load(CRD_FILE.read_text())


def test_the_promised_examples_exist():
    assert {p.name for p in EXAMPLES} >= PROMISED, f"missing: {PROMISED - {p.name for p in EXAMPLES}}"


@pytest.mark.parametrize(("name", "job"), jobs(), ids=[n for n, _ in jobs()])
def test_job_matches_the_crd_schema(name, job):
    assert job["apiVersion"] == "kubeclip.dev/v1alpha1"
    assert crd_jsonschema.errors(crd(), job) == []


def test_the_schema_check_catches_a_typo():
    """The check above can fail: a misspelt key and a wrong type are both reported."""
    _, job = jobs()[0]
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["training"]["batchSzie"] = 8
    bad["spec"]["numNodes"] = "two"
    found = " ".join(crd_jsonschema.errors(crd(), bad))
    assert "batchSzie" in found
    assert "spec.numNodes" in found


@pytest.mark.parametrize(("name", "job"), jobs(), ids=[n for n, _ in jobs()])
def test_job_passes_the_controller_and_trainer_models(name, job):
    from kubeclip.api import FineTuneJobSpec, parse_spec

    FineTuneJobSpec.model_validate(job["spec"])
    spec = parse_spec(job["spec"])
    assert job["metadata"]["name"]
    if name != "local-cpu.yaml":
        # The cluster examples run the trainer image and keep their data on a volume.
        assert job["spec"]["image"]
        assert job["spec"]["volumes"]
        assert job["spec"]["volumeMounts"]
        mounts = [m["mountPath"] for m in job["spec"]["volumeMounts"]]
        for path in (spec.dataset.trainCsv, spec.dataset.valCsv, spec.output.path):
            assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is not on a mounted volume"


def test_minimal_example_is_the_classic_guide():
    job = next(d for n, d in jobs() if n == "finetune-minimal.yaml")
    spec = job["spec"]
    assert spec["model"] == {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    assert spec["training"]["learningRate"] == 5e-6
    assert spec["training"]["warmupSteps"] == 1000
    assert spec["numProcPerNode"] == 6
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 6
    assert any("persistentVolumeClaim" in v for v in spec["volumes"])


def test_multinode_example_spans_several_gpu_nodes():
    job = next(d for n, d in jobs() if n == "finetune-multinode.yaml")
    assert job["spec"]["numNodes"] > 1
    assert job["spec"]["resources"]["limits"]["nvidia.com/gpu"] == job["spec"]["numProcPerNode"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_builtin_kinds_pass_kubernetes_validate_strict(path):
    builtin = [d for d in documents(path) if d.get("kind") != "FineTuneJob"]
    for doc in builtin:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    if path.name == "dataset-pvc.yaml":
        kinds = [d["kind"] for d in builtin]
        assert kinds == ["PersistentVolumeClaim", "Pod"]
        pod = builtin[1]
        claim = builtin[0]["metadata"]["name"]
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
        minimal = next(d for n, d in jobs() if n == "finetune-minimal.yaml")
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in minimal["spec"]["volumes"])


@pytest.mark.cluster
def test_every_example_passes_server_side_dry_run(cluster, namespace):
    """The real API server accepts each document: schema, CEL rules and admission."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=kubeclip-examples-test", "-f", str(CRD_FILE)
    )
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubeclip.dev")
    # The loader pod must pass the restricted Pod Security Standard (PodSecurity admission).
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    for path in EXAMPLES:
        out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(path))
        assert out.stdout.count("(server dry run)") == len(documents(path)), out.stdout
    # And the dry run does reject: a CEL rule of the CRD (both towers frozen).
    job = yaml.safe_load((ROOT / "examples" / "finetune-minimal.yaml").read_text())
    job["spec"]["training"].update(lockImage=True, lockText=True)
    bad = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(job), check=False
    )
    assert bad.returncode != 0, bad.stderr
    assert "nothing would be trained" in bad.stderr, bad.stderr


#: Where the trainer raises ``PreflightError``: the CSV reader, the eval sets, the other checks.
PREFLIGHT_MODULES = ("table.py", "evalsets.py", "preflight.py")


def _preflight_messages() -> list[list[str]]:
    """The literal parts of every ``PreflightError(...)`` message in :data:`PREFLIGHT_MODULES`."""
    import ast

    messages = []
    nodes = [n for m in PREFLIGHT_MODULES for n in ast.walk(ast.parse((ROOT / "trainer" / m).read_text()))]
    for node in nodes:
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "PreflightError" and node.args:
            parts = [
                c.value for c in ast.walk(node.args[0]) if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
            parts = [p.strip(" :;,.()'") for p in parts]
            messages.append([p for p in parts if len(p) >= 8])
    return messages


def test_readme_troubleshooting_covers_every_preflight_error():
    """The README's troubleshooting table names each preflight error the trainer can raise."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    messages = _preflight_messages()
    assert len(messages) >= 12, "fewer preflight errors than expected: did the preflight's modules move?"
    missing = [m for m in messages if m and not any(part in section for part in m)]
    assert missing == [], f"README troubleshooting lacks: {missing}"
