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
import shutil
import subprocess
import sys
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import netns  # noqa: E402
from support.cluster import Cluster  # noqa: E402
from support.controlplane import client_bin_dir  # noqa: E402
from support.node import NAME, NODE_IP  # noqa: E402

from e2e_helpers import CLUSTER_DIR, CONTROLLER_NS  # noqa: E402


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


