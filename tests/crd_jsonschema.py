"""Validate objects against a CRD's openAPIV3Schema offline, the way the API server would.

Who uses it: tests/unit/test_examples.py (FineTuneJob examples against the generated CRD) and
tests/integration/test_chart.py (ServiceMonitor/PodMonitor/PrometheusRule against the Prometheus
Operator's own CRDs, which kubernetes-validate has no schemas for).

Why it exists: a structural schema is *almost* JSON Schema. The differences handled here:
boolean ``exclusiveMinimum``/``exclusiveMaximum`` (OpenAPI 3.0), ``nullable: true`` (null allowed), ``x-kubernetes-int-or-string`` (no ``type``),
``x-kubernetes-preserve-unknown-fields`` (unknown keys kept), and unknown fields — which the API
server prunes silently, while ``kubectl --validate=strict`` rejects them; we reject them too, so a
typo in an example fails. CEL rules (``x-kubernetes-validations``) are not evaluated here: the
server dry-run tests evaluate them.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema


def to_jsonschema(node: Any) -> Any:
    """Translate one structural-schema node (recursively) into Draft 7 JSON Schema."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    for bound in ("minimum", "maximum"):
        # OpenAPI 3.0 says `exclusiveMinimum: true` next to `minimum`; Draft 7 wants the number.
        flag = "exclusive" + bound.capitalize()
        if isinstance(node.get(flag), bool):
            if node[flag]:
                out[flag] = out.pop(bound)
            else:
                out.pop(flag)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    is_object = node.get("type") == "object"
    if (
        is_object
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def version_schema(crd: dict, version: str | None = None) -> dict:
    """The JSON Schema of one served version of a CRD (the storage version by default)."""
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if (v["name"] == version if version else v.get("storage")))
    schema = to_jsonschema(copy.deepcopy(chosen["schema"]["openAPIV3Schema"]))
    # apiVersion, kind and metadata are the API server's; only check they are there.
    props = schema.setdefault("properties", {})
    for key in ("apiVersion", "kind", "metadata"):
        props.setdefault(key, {})
    props["metadata"] = {"type": "object"}
    schema["additionalProperties"] = False
    return schema


def errors(crd: dict, obj: dict) -> list[str]:
    """Every schema violation of ``obj`` as ``path: message`` (empty when valid)."""
    validator = jsonschema.Draft7Validator(version_schema(crd))
    return sorted(
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)
    )
