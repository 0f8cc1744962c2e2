"""Helpers of the end-to-end tests (tests/e2e): load the dataset, write a FineTuneJob, explain.

Who uses it: the e2e test modules and their conftest. A module of its own (not conftest) so the test
modules can import it by a name no other test directory uses. Polling (``devkit.wait.wait_for``),
the cluster handle (``devkit.cluster``) and the job document (``devkit.jobs.cluster_job``) are the
dev kit's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from devkit.cluster import Cluster
from devkit.jobs import cluster_job
from devkit.paths import REPO
from devkit.wait import wait_for

CONTROLLER_NS = "kubeclip-system"


def dataset_pvc(url: str) -> str:
    """examples/dataset-pvc.yaml as shipped with ``DATASET_URL`` set to ``url``. Only the image
    differs: the official python:*-slim cannot be pulled here, the local base (Debian bookworm's
    Python 3.11.2, hack/images.sh) stands in for it."""
    docs = list(yaml.safe_load_all((REPO / "examples/dataset-pvc.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Pod")
    c = pod["spec"]["containers"][0]
    c["image"] = "kubeclip.local/python:3.11-bookworm"
    for e in c["env"]:
        if e["name"] == "DATASET_URL":
            e["value"] = url
    return yaml.safe_dump_all(docs)


def load_dataset(kube: Cluster, ns: str, data_dir: Path) -> None:
    """examples/dataset-pvc.yaml in its copy-a-local-folder mode (DATASET_URL ""): the loader pod
    waits, ``kubectl cp`` (exec streaming through the kubelet) fills the claim, the pod is deleted.
    (Its download mode has a test of its own: tests/e2e/test_dataset_download.py.)"""
    kube.kubectl("-n", ns, "apply", "-f", "-", input=dataset_pvc(""))
    explain = lambda: kube.kubectl("-n", ns, "describe", "pod", "dataset-loader", check=False).stdout  # noqa: E731
    wait_for(
        lambda: "waiting for `kubectl cp`" in kube.kubectl("-n", ns, "logs", "dataset-loader", check=False).stdout,
        240,
        "dataset-loader waiting for kubectl cp",
        every_s=1,
        explain=explain,
    )
    kube.kubectl("-n", ns, "cp", str(data_dir), "dataset-loader:/data/penguins", timeout=300)
    listing = kube.kubectl(
        "-n",
        ns,
        "exec",
        "dataset-loader",
        "--",
        "python",
        "-c",
        "import os; print(sorted(os.listdir('/data/penguins')), os.stat('/data/penguins/train.csv').st_uid)",
    ).stdout
    assert "'train.csv'" in listing, listing
    assert "'val.csv'" in listing, listing
    assert listing.split()[-1] == "1000", listing
    kube.kubectl("-n", ns, "delete", "pod", "dataset-loader", "--wait=false")


def ftj_manifest(
    name: str,
    *,
    epochs: int = 2,
    train_csv: str = "train.csv",
    separator: str = ",",
    checkpoint_every: int = 4,
    backoff: int = 3,
    extra: dict | None = None,
) -> str:
    """The multi-node example, CPU-sized: 2 nodes x 1 process, the tiny model, no spec.image.
    ``extra``: more spec keys (e.g. ``evaluation``), added on top."""
    doc = cluster_job(
        name,
        claim="kubeclip-datasets",
        image=None,
        model={"name": "local-dir:/data/penguins/models/tiny-vit-64"},
        dataset={
            "trainCsv": f"/data/penguins/{train_csv}",
            "valCsv": "/data/penguins/val.csv",
            "separator": separator,
        },
        training={
            "epochs": epochs,
            "batchSize": 8,
            "learningRate": 5.0e-4,
            "warmupSteps": 2,
            "precision": "fp32",
            "workers": 0,
            "seed": 0,
            "checkpointEverySteps": checkpoint_every,
            "logEverySteps": 1,
        },
        output={"path": f"/data/runs/{name}"},
        numNodes=2,
        numProcPerNode=1,
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "3Gi"}},
        runPolicy={"backoffLimit": backoff},
        **(extra or {}),
    )
    return json.dumps(doc)


def ftj(kube: Cluster, ns: str, name: str) -> dict:
    return json.loads(kube.kubectl("-n", ns, "get", "ftj", name, "-o", "json").stdout)


def debug(kube: Cluster, ns: str, name: str):
    def explain() -> str:
        parts = [
            kube.kubectl("-n", ns, "get", "ftj", name, "-o", "yaml", check=False).stdout,
            kube.kubectl("-n", ns, "get", "pods", "-o", "wide", check=False).stdout,
            kube.kubectl("-n", CONTROLLER_NS, "logs", "deploy/kubeclip", "--tail=30", check=False).stdout,
        ]
        for i in (0, 1):
            parts.append(kube.kubectl("-n", ns, "logs", f"{name}-node-{i}", "--tail=15", check=False).stdout)
        return "\n---\n".join(parts)

    return explain


def pv_dir(kube: Cluster, ns: str, claim: str = "kubeclip-datasets") -> Path:
    """The host directory behind the claim (local-path-provisioner's shared path)."""
    pv = kube.kubectl("-n", ns, "get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}").stdout
    spec = json.loads(kube.kubectl("get", "pv", pv, "-o", "json").stdout)["spec"]
    return Path((spec.get("hostPath") or spec.get("local"))["path"])


RESUMED = re.compile(r"resumed from \S+/step-(\d+)\.pt: step (\d+) \(epoch (\d+), step (\d+) of it\)")
STEP_LOGGED = re.compile(r"step (\d+)/\d+ epoch")


def resumed_and_stepped(kube: Cluster, ns: str, name: str) -> tuple[re.Match[str], int] | None:
    """Node 0's log shows the resume (the match of :data:`RESUMED`) and the first step this attempt
    ran (its number); None until both are there. A disruption test stops here: the resumed attempt
    loaded the checkpoint and trained on from it. Running on to ``Succeeded`` would prove completion
    again, which the 2-node job of test_finetune.py already proves."""
    log0 = kube.kubectl("-n", ns, "logs", f"{name}-node-0", check=False).stdout
    resumed, first = RESUMED.search(log0), STEP_LOGGED.search(log0)
    return (resumed, int(first.group(1))) if resumed and first else None


def wait_resumed(
    kube: Cluster, ns: str, name: str, explain: Callable[[], str], timeout_s: float = 600, what: str = ""
) -> tuple[re.Match[str], int]:
    """Wait until the job is Running again and :func:`resumed_and_stepped` holds; its answer."""
    found: tuple[re.Match[str], int] = wait_for(
        lambda: (
            (ftj(kube, ns, name).get("status") or {}).get("phase") == "Running" and resumed_and_stepped(kube, ns, name)
        ),
        timeout_s,
        f"{name}: {what or 'Running again'}, resumed and a step past it",
        explain=explain,
        every_s=2,
    )
    return found
