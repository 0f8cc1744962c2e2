"""FineTuneJob documents for local runs, for a cluster, and as written to disk: the one job factory.

Who uses it: the trainer integration tests (``tests/integration/trainer_helpers.py`` and the
tests that write their own runs), the controller integration tests and ``hack/bench_controller.py``
(:func:`cluster_job`), the e2e tests (:func:`cluster_job`, :func:`finetunejob`), and the hack/
scripts that run the trainer (``forgetting_demo``, ``gpu_precisions``, ``bench_trainer``,
``bench_gpu``: :func:`local_job`). It exists so that the envelope, the paths' shape and the
reproducible CPU defaults are written once; each caller states only what its run is about.
Plain dicts (what kubectl, the Python client and ``python -m trainer`` read), not the pydantic
model: tests must be able to build invalid jobs too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

API_VERSION = "kubeclip.dev/v1alpha1"
KIND = "FineTuneJob"
#: spec.training of a local run unless the caller says otherwise: fp32 on CPU, seed 0 (reproducible).
LOCAL_TRAINING: dict[str, Any] = {"precision": "fp32", "seed": 0}
#: spec of :func:`cluster_job` unless the caller says otherwise: a small 2-node job whose data,
#: model and output are on the PersistentVolumeClaim mounted at /data.
CLUSTER_SPEC: dict[str, Any] = {
    "image": "ghcr.io/kubeclip/kubeclip-trainer:0.1.0",
    "model": {"name": "local-dir:/data/tiny_model"},
    "dataset": {"trainCsv": "/data/train.csv", "valCsv": "/data/val.csv"},
    "training": {"epochs": 2, "batchSize": 4},
    "output": {"path": "/data/out"},
    "numNodes": 2,
    "numProcPerNode": 1,
}


def finetunejob(
    name: str, spec: dict[str, Any], *, namespace: str | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The document: apiVersion, kind, metadata (name, and namespace/labels when given), spec."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def local_job(
    name: str,
    *,
    model: str,
    train_csv: Path | str,
    output: Path | str,
    pretrained: Path | str | None = None,
    val_csv: Path | str | None = None,
    training: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A run on this machine (``python -m trainer JOB.yaml``, ``python -m trainer.node``, torchrun):
    local paths, :data:`LOCAL_TRAINING` under ``training``, metrics on a port of the OS's choosing.

    ``model`` is ``spec.model.name`` (e.g. :func:`devkit.tiny_model.tiny_model`'s ``local-dir:``),
    ``pretrained`` its ``spec.model.pretrained`` weights file; ``dataset`` adds keys to
    ``spec.dataset`` (``separator``); ``spec`` adds or replaces top-level spec keys
    (``evaluation``, ``export``, ``numProcPerNode``, ``metrics``)."""
    doc_spec: dict[str, Any] = {
        "model": {"name": model, **({"pretrained": str(pretrained)} if pretrained is not None else {})},
        "dataset": {
            "trainCsv": str(train_csv),
            **({"valCsv": str(val_csv)} if val_csv is not None else {}),
            **(dataset or {}),
        },
        "training": {**LOCAL_TRAINING, **(training or {})},
        "output": {"path": str(output)},
        "metrics": {"port": 0},
        **spec,
    }
    return finetunejob(name, doc_spec)


def cluster_job(
    name: str,
    namespace: str | None = None,
    *,
    claim: str = "datasets",
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A job for a cluster: :data:`CLUSTER_SPEC` with ``spec`` keys replacing its keys (a key given
    as None is left out: ``image=None`` lets the controller pick its default trainer image), and
    the PersistentVolumeClaim ``claim`` mounted at /data in every pod."""
    doc_spec: dict[str, Any] = {
        **CLUSTER_SPEC,
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    doc_spec.update(spec)
    return finetunejob(name, {k: v for k, v in doc_spec.items() if v is not None}, namespace=namespace, labels=labels)


def write(doc: dict[str, Any], path: Path) -> Path:
    """``doc`` as YAML at ``path`` (what ``python -m trainer PATH`` and ``kubectl apply -f`` read); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path
