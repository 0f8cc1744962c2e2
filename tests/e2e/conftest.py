"""Fixtures of the end-to-end tests: the running one-node cluster, a dataset served inside its network, a
namespace per test with that dataset loaded into a PVC by ``examples/dataset-pvc.yaml``.

Who uses it: tests/e2e (``make e2e`` = ``make cluster-up images deploy`` + ``pytest -m e2e tests/e2e``).
A missing cluster FAILS the tests (never skips): run ``make cluster-up images deploy``.

The dataset (``trainer.sample_data`` + the tiny ``examples/models/tiny-vit-64`` config) is packed into
a .tar.gz and served over HTTP on the node IP, inside the cluster's network namespace (a socket opened
from a thread that joined it): the loader pod downloads it exactly as the example does, and no traffic
leaves that namespace.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "hack"))

from support import netns  # noqa: E402
from support.cluster import Cluster  # noqa: E402
from support.controlplane import client_bin_dir  # noqa: E402
from support.node import NAME, NODE_IP  # noqa: E402

CLUSTER_DIR = REPO / ".cluster"
CONTROLLER_NS = "kubeclip-system"


def pytest_collection_modifyitems(items):
    """Tests marked ``last`` (cluster-down) run after all others."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "last: runs after every other e2e test (it stops the cluster)")


@pytest.fixture(scope="session")
def kube() -> Cluster:
    state = CLUSTER_DIR / "state.json"
    if not state.exists() or not netns.exists(NAME):
        pytest.fail("no local cluster: run `make cluster-up images deploy` (`make e2e` does)", pytrace=False)
    c = Cluster(kubeconfig=str(CLUSTER_DIR / "kubeconfig"), server="", bin=str(client_bin_dir()))
    out = c.kubectl("-n", CONTROLLER_NS, "get", "deploy", "-o", "name", check=False)
    if "kubeclip" not in out.stdout:
        pytest.fail("kubeclip is not deployed: run `make images deploy` (`make e2e` does)", pytrace=False)
    return c


@pytest.fixture(scope="session")
def dataset_url(tmp_path_factory) -> str:
    """URL (inside the cluster's network) of penguins.tar.gz: train.csv, val.csv (comma), bad.csv
    (semicolon), images/, models/tiny-vit-64/."""
    root = tmp_path_factory.mktemp("dataset")
    data = root / "penguins"
    subprocess.run([sys.executable, "-m", "trainer.sample_data", "--out", str(data), "--n", "96", "--val-n", "16",
                    "--size", "64"], check=True, cwd=REPO, capture_output=True)
    bad = (data / "train.csv").read_text().replace(",", ";")
    (data / "bad.csv").write_text(bad)
    shutil.copytree(REPO / "examples/models/tiny-vit-64", data / "models/tiny-vit-64")
    serve = root / "serve"
    serve.mkdir()
    with tarfile.open(serve / "penguins.tar.gz", "w:gz") as tar:
        for p in sorted(data.iterdir()):
            tar.add(p, arcname=p.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = netns.call_in(NAME, lambda: http.server.ThreadingHTTPServer((NODE_IP, 0), handler))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{NODE_IP}:{server.server_address[1]}/penguins.tar.gz"
    server.shutdown()


@pytest.fixture
def namespace(request, kube: Cluster):
    name = "e2e-" + request.node.name.replace("_", "-")[5:30].strip("-") + "-" + uuid.uuid4().hex[:5]
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def load_dataset(kube: Cluster, ns: str, url: str) -> None:
    """examples/dataset-pvc.yaml as shipped, but the URL of our dataset and the local python image
    (the official python:*-slim cannot be pulled here). Waits for the loader pod to succeed."""
    docs = list(yaml.safe_load_all((REPO / "examples/dataset-pvc.yaml").read_text()))
    pod = next(d for d in docs if d["kind"] == "Pod")
    c = pod["spec"]["containers"][0]
    c["image"] = "kubeclip.local/python:3.11-bookworm"
    for e in c["env"]:
        if e["name"] == "DATASET_URL":
            e["value"] = url
    kube.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    wait_for(lambda: kube.kubectl("-n", ns, "get", "pod", "dataset-loader", "-o", "jsonpath={.status.phase}",
                                  check=False).stdout in ("Succeeded", "Failed"), 240, "dataset-loader finished",
             lambda: kube.kubectl("-n", ns, "describe", "pod", "dataset-loader", check=False).stdout)
    logs = kube.kubectl("-n", ns, "logs", "dataset-loader").stdout
    assert "train.csv 96 rows" in logs and "val.csv 16 rows" in logs, logs


def ftj_manifest(name: str, *, epochs: int = 2, train_csv: str = "train.csv", separator: str = ",",
                 checkpoint_every: int = 4, backoff: int = 3) -> str:
    """The multi-node example, CPU-sized: 2 nodes x 1 process, the tiny model, no spec.image."""
    doc = {
        "apiVersion": "kubeclip.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "model": {"name": "local-dir:/data/penguins/models/tiny-vit-64"},
            "dataset": {"trainCsv": f"/data/penguins/{train_csv}", "valCsv": "/data/penguins/val.csv",
                        "separator": separator},
            "training": {"epochs": epochs, "batchSize": 8, "learningRate": 5.0e-4, "warmupSteps": 2,
                         "precision": "fp32", "workers": 0, "seed": 0, "checkpointEverySteps": checkpoint_every,
                         "logEverySteps": 1},
            "output": {"path": f"/data/runs/{name}"},
            "numNodes": 2, "numProcPerNode": 1,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "3Gi"}},
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "kubeclip-datasets"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "runPolicy": {"backoffLimit": backoff},
        },
    }
    return json.dumps(doc)


def ftj(kube: Cluster, ns: str, name: str) -> dict:
    return json.loads(kube.kubectl("-n", ns, "get", "ftj", name, "-o", "json").stdout)


def wait_for(ok, timeout_s: float, what: str, explain=None, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while True:
        v = ok()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{explain() if explain else ''}", pytrace=False)
        time.sleep(every_s)


def debug(kube: Cluster, ns: str, name: str):
    def explain() -> str:
        parts = [kube.kubectl("-n", ns, "get", "ftj", name, "-o", "yaml", check=False).stdout,
                 kube.kubectl("-n", ns, "get", "pods", "-o", "wide", check=False).stdout,
                 kube.kubectl("-n", CONTROLLER_NS, "logs", "deploy/kubeclip", "--tail=30", check=False).stdout]
        for i in (0, 1):
            parts.append(kube.kubectl("-n", ns, "logs", f"{name}-node-{i}", "--tail=15", check=False).stdout)
        return "\n---\n".join(parts)
    return explain


def pv_dir(kube: Cluster, ns: str, claim: str = "kubeclip-datasets") -> Path:
    """The host directory behind the claim (local-path-provisioner's shared path)."""
    pv = kube.kubectl("-n", ns, "get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}").stdout
    spec = json.loads(kube.kubectl("get", "pv", pv, "-o", "json").stdout)["spec"]
    return Path((spec.get("hostPath") or spec.get("local"))["path"])
