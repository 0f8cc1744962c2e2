"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models in :mod:`.api`.

Who uses it and why it exists: ``kubeclip crd`` / ``make crd`` print it into
``helm/kubeclip/files/crd-finetunejobs.yaml`` (the chart ships that file), and a unit test
regenerates it and fails on drift, so the API server, the controller and the trainer validate the
same thing. Pydantic emits JSON Schema (``$ref``s, ``anyOf`` with ``null``, numeric
``exclusiveMinimum``); Kubernetes wants a *structural* OpenAPI v3 schema. :func:`structural`
translates: refs are inlined, ``Optional[X]`` becomes ``nullable: true``, ``int | str`` becomes
``x-kubernetes-int-or-string``, free-form objects keep their unknown fields, defaults move into
the description (the controller and trainer apply them, so stored objects stay as written), and
cross-field rules become CEL ``x-kubernetes-validations``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from pydantic import BaseModel

from kubeclip.api import (
    ALLOWED_KEY_RE,
    API_GROUP,
    API_VERSION,
    CONFIG_DIR,
    GPU_RESOURCE,
    KIND,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    RESERVED_KEY_RE,
    RESERVED_VOLUMES,
    SHM_PATH,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Phase,
    TrainerSpec,
)

from .naming import MAX_JOB_NAME

PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
CRD_NAME = f"{PLURAL}.{API_GROUP}"

_DROP = {"title", "default", "$defs", "additionalProperties"}


def _describe_default(out: dict[str, Any], default: Any) -> None:
    if default is None or default in ("", [], {}) or isinstance(default, dict):
        return
    text = json.dumps(default) if not isinstance(default, str) else default
    desc = out.get("description", "")
    out["description"] = (desc + " " if desc else "") + f"Default: {text}."


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON-Schema node (and its children) into a structural schema node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        merged = {**target, **node}  # the field's own description wins over the class docstring
        return structural(merged, defs)
    out: dict[str, Any] = {}
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        types = sorted(o.get("type", "") for o in options)
        if types == ["integer", "string"]:
            out["x-kubernetes-int-or-string"] = True
        elif len(options) == 1:
            out = structural(options[0], defs)
        else:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        if nullable:
            out["nullable"] = True
    for key, value in node.items():
        if key in _DROP or key == "anyOf":
            continue
        if key == "properties":
            out["properties"] = {k: structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = copy.deepcopy(value)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" not in node:
        if extra:  # dict[str, X]
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif extra is True and "properties" not in node:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "default" in node:
        _describe_default(out, node["default"])
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    return out


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _quote(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _cel_re(pattern: str) -> str:
    """A Python regular expression as the body of a single-quoted CEL string (backslashes doubled)."""
    return pattern.replace("\\", "\\\\")


def _add_rules(spec: dict[str, Any]) -> None:
    """CEL rules for what one field's schema cannot say (mirrors api.cross_field_errors)."""
    props = spec["properties"]
    unlocked_image = "(has(self.lockImageUnlockedGroups) && self.lockImageUnlockedGroups > 0)"
    unlocked_text = "(has(self.lockTextUnlockedLayers) && self.lockTextUnlockedLayers > 0)"
    props["training"].setdefault("x-kubernetes-validations", []).extend(
        [
            {
                "rule": f"!{unlocked_image} || (has(self.lockImage) && self.lockImage)",
                "message": "lockImageUnlockedGroups is set but lockImage is false: set lockImage: true",
            },
            {
                "rule": f"!{unlocked_text} || (has(self.lockText) && self.lockText)",
                "message": "lockTextUnlockedLayers is set but lockText is false: set lockText: true",
            },
            {
                "rule": "!(has(self.lockImage) && has(self.lockText) && self.lockImage && self.lockText) "
                f"|| {unlocked_image} || {unlocked_text}",
                "message": "lockImage and lockText are both true: nothing would be trained",
            },
        ]
    )
    props["volumes"]["x-kubernetes-validations"] = [
        {"rule": "self.all(v, self.exists_one(w, w.name == v.name))", "message": "volume names must be unique"},
        {
            "rule": f"self.all(v, !(v.name in {_quote(RESERVED_VOLUMES)}))",
            "message": f"the volume names {', '.join(RESERVED_VOLUMES)} are reserved by the controller",
        },
    ]
    props["volumeMounts"]["x-kubernetes-validations"] = [
        {
            "rule": f"self.all(m, m.mountPath != '{CONFIG_DIR}' && m.mountPath != '{CONFIG_DIR}/' "
            f"&& !m.mountPath.startsWith('{CONFIG_DIR}/'))",
            "message": f"{CONFIG_DIR} is reserved for the job config",
        },
        {
            "rule": f"self.all(m, m.mountPath != '{SHM_PATH}' && m.mountPath != '{SHM_PATH}/')",
            "message": f"{SHM_PATH} is mounted by the controller",
        },
    ]
    props["env"]["x-kubernetes-validations"] = [
        {
            "rule": f"self.all(e, !(e.name in {_quote(RESERVED_ENV)})"
            + "".join(f" && !e.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
            + ")",
            "message": "this variable is set by the controller or reserved for it (the topology, "
            + ", ".join(f"{p}*" for p in RESERVED_ENV_PREFIXES)
            + ")",
        }
    ]
    for key in ("podLabels", "podAnnotations"):
        props[key]["x-kubernetes-validations"] = [
            {
                "rule": f"self.all(k, !k.matches('{_cel_re(RESERVED_KEY_RE)}') || k.matches('{_cel_re(ALLOWED_KEY_RE)}'))",
                "message": "keys under kubeclip.dev, kubernetes.io, k8s.io and x-k8s.io are reserved "
                "(app.kubernetes.io is allowed)",
            }
        ]
    procs = "(has(self.numProcPerNode) ? self.numProcPerNode : 1)"
    gpu_rules = []
    for kind in ("limits", "requests"):
        gpu_rules.append(
            {
                "rule": f"!has(self.resources) || !has(self.resources.{kind}) || "
                f"!('{GPU_RESOURCE}' in self.resources.{kind}) || "
                f"string(self.resources.{kind}['{GPU_RESOURCE}']) == string({procs})",
                "message": f"resources.{kind}[{GPU_RESOURCE}] must equal numProcPerNode",
            }
        )
    spec["x-kubernetes-validations"] = [
        {
            "rule": "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
            "self.volumes.exists(v, v.name == m.name))",
            "message": "every volumeMounts[].name must name a volume in spec.volumes",
        },
        *gpu_rules,
    ]


#: Descriptions of the trainer's sections, whose classes (kubeclip/api/trainer_spec.py) carry none.
SECTION_DOCS = {
    "model": "Which OpenCLIP model to start from (architecture and pretrained weights).",
    "dataset": "The image-caption CSV files (paths inside the trainer container).",
    "training": "Optimisation: epochs, batch size, learning rate, precision, checkpoints.",
    "output": "Where checkpoints, progress.json and the final model are written.",
    "metrics": "The trainer's Prometheus and /progress endpoint on node 0.",
}


def openapi_schema() -> dict[str, Any]:
    spec = _model_schema(FineTuneJobSpec)
    for key, doc in SECTION_DOCS.items():
        spec["properties"][key].setdefault("description", doc)
    spec["description"] = (
        "What to fine-tune (model, dataset, training, output) and where to run it (image, "
        "numNodes x numProcPerNode, resources, volumes, scheduling, runPolicy)."
    )
    _add_rules(spec)
    status = _model_schema(FineTuneJobStatus)
    status["description"] = "Written by the controller: phase, conditions, node counts, restarts and progress."
    return {
        "type": "object",
        "description": "FineTuneJob fine-tunes an OpenCLIP model on image-caption CSV data with "
        "numNodes pods running the kubeclip trainer under torchrun.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_JOB_NAME}",
                "message": f"metadata.name must be at most {MAX_JOB_NAME} characters "
                "(pod hostnames <name>-node-<i> must fit in 63)",
            },
            {
                "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "message": "metadata.name must be a DNS-1035 label (it names the headless Service)",
            },
            *immutability_rules(),
        ],
    }


#: Phases in which the trainer part of the spec may change: not yet started, or suspended.
MUTABLE_PHASES = (Phase.SUSPENDED,)


def immutability_rules() -> list[dict[str, Any]]:
    """CEL transition rules: each trainer key of the spec (the pods' job.yaml) is immutable while
    the job has pods, i.e. from the first status until it is Suspended. runPolicy (suspend, limits,
    TTL) and the cluster keys stay mutable: they take effect for pods created afterwards."""
    phases = ", ".join(f"'{p}'" for p in MUTABLE_PHASES)
    free = f"!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase in [{phases}]"
    rules = []
    for key in TrainerSpec.model_fields:
        same = f"has(self.spec.{key}) == has(oldSelf.spec.{key}) && (!has(self.spec.{key}) || self.spec.{key} == oldSelf.spec.{key})"
        rules.append(
            {
                "rule": f"{free} || ({same})",
                "message": f"spec.{key} cannot change while the job runs: suspend it first (runPolicy.suspend: true)",
                "fieldPath": f".spec.{key}",
                "reason": "FieldValueForbidden",
            }
        )
    return rules


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes.total"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "R@1", "type": "number", "jsonPath": ".status.progress.recallAt1"},
    {"name": "R@1 vs base", "type": "number", "jsonPath": ".status.progress.recallAt1Gain"},
    {"name": "Queue", "type": "string", "jsonPath": ".status.queue.pending"},
    {"name": "Retention drop", "type": "number", "jsonPath": ".status.progress.retentionDrop", "priority": 1},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restartCount", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "kubeclip"}},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": ["ftj"],
                "categories": ["kubeclip"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `make crd` (kubeclip crd) from kubeclip/api: do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)
