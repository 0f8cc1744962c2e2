"""The generated CRD (controller/crd.py): structural, documented, and identical to the chart's copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.crd import crd, crd_yaml
from kubeclip.api import parse_job_spec

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "helm/kubeclip/files/crd-finetunejobs.yaml"


def test_committed_crd_has_not_drifted():
    assert COMMITTED.read_text() == crd_yaml(), "the CRD changed: run `make crd` and commit the result"


def _walk(node, path="schema"):
    yield path, node
    for k, v in (node.get("properties") or {}).items():
        yield from _walk(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schema():
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural():
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "default", "const"}
    for path, node in _walk(_schema()):
        assert not forbidden & set(node), f"{path} has {forbidden & set(node)}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path
            assert "minimum" in node, path


def test_spec_fields_are_described_for_kubectl_explain():
    spec = _schema()["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        if path.count(".") == 1 and not path.endswith(("[]", "}")):  # every top-level spec field
            assert node.get("description"), f"{path} has no description"
    lr = spec["properties"]["training"]["properties"]["learningRate"]
    assert "Default: 5e-05" in lr["description"]
    assert lr["exclusiveMinimum"] is True


def test_nullable_and_embedded_types():
    props = _schema()["properties"]["spec"]["properties"]
    assert props["dataset"]["properties"]["valCsv"] == {
        **props["dataset"]["properties"]["valCsv"],
        "type": "string",
        "nullable": True,
    }
    assert props["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["volumes"]["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["volumes"]["items"]["required"] == ["name"]
    assert props["resources"]["properties"]["limits"]["additionalProperties"] == {"x-kubernetes-int-or-string": True}
    assert props["runPolicy"]["properties"]["cleanPodPolicy"]["enum"] == ["Running", "All", "None"]


def test_names_columns_status_and_rules():
    c = crd()
    assert c["metadata"]["name"] == "finetunejobs.kubeclip.dev"
    names = c["spec"]["names"]
    assert names["shortNames"] == ["ftj"]
    assert names["categories"] == ["kubeclip"]
    assert names["kind"] == "FineTuneJob"
    v = c["spec"]["versions"][0]
    assert v["name"] == "v1alpha1"
    assert v["subresources"] == {"status": {}}
    assert [col["name"] for col in v["additionalPrinterColumns"]] == [
        "Phase",
        "Nodes",
        "Progress",
        "Loss",
        "R@1",
        "R@1 vs base",
        "Queue",
        "Retention drop",
        "Restarts",
        "Age",
    ]
    rules = [r["rule"] for r in _walk_rules(_schema())]
    assert any("metadata.name.size()" in r for r in rules)
    assert any("lockImage" in r for r in rules)
    assert any("volumeMounts.all" in r for r in rules)
    assert any("nvidia.com/gpu" in r for r in rules)


def _walk_rules(schema):
    for _, node in _walk(schema):
        yield from node.get("x-kubernetes-validations") or []


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_validate(path):
    jobs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "FineTuneJob"]
    for doc in jobs:
        parse_job_spec(doc["spec"])
