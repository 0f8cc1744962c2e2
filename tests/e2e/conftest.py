"""Fixtures of the end-to-end tests: the running one-node cluster, a generated dataset, a namespace per test.

Who uses it: tests/e2e (``make e2e`` = ``make cluster-up images deploy`` + ``pytest -m e2e tests/e2e``).
A missing cluster FAILS the tests (never skips): run ``make cluster-up images deploy``.

The dataset (``trainer.sample_data`` + the tiny ``examples/models/tiny-vit-64`` config) is loaded into
each test's PVC by ``examples/dataset-pvc.yaml`` and ``kubectl cp`` (``e2e_helpers.load_dataset``).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import CONTROLLER_NS

from devkit import netns
from devkit.cluster import Cluster, local_cluster
from devkit.node import NAME
from devkit.paths import CLUSTER_DIR, REPO


def pytest_collection_modifyitems(items):
    """test_monitoring.py runs first (its KubeclipJobFailed check needs a cluster where no preflight failure
    happened in the last 15 minutes); tests marked ``last`` (cluster-down) run after all others."""
    items.sort(
        key=lambda item: (item.get_closest_marker("last") is not None, item.module.__name__ != "test_monitoring")
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "last: runs after every other e2e test (it stops the cluster)")


@pytest.fixture(scope="session")
def kube() -> Cluster:
    state = CLUSTER_DIR / "state.json"
    if not state.exists() or not netns.exists(NAME):
        pytest.fail("no local cluster: run `make cluster-up images deploy` (`make e2e` does)", pytrace=False)
    c = local_cluster()
    out = c.kubectl("-n", CONTROLLER_NS, "get", "deploy", "-o", "name", check=False)
    if "kubeclip" not in out.stdout:
        pytest.fail("kubeclip is not deployed: run `make images deploy` (`make e2e` does)", pytrace=False)
    return c


@pytest.fixture(scope="session", autouse=True)
def started_early(request) -> Iterator[dict[str, object]]:
    """What the selected test modules start when the session begins: a module defining
    ``start_early(request)`` (a context manager; it may take session fixtures with
    ``request.getfixturevalue``) has it entered before the first test and left after the last; its value
    is here under the module's ``__name__``. For jobs that mostly wait (test_waiting_reasons.py's start
    deadlines, test_monitoring.py's frozen trainer): they wait beside the tests that run first."""
    modules = sorted(
        {item.module for item in request.session.items if hasattr(item.module, "start_early")},
        key=lambda m: m.__name__,
    )
    with contextlib.ExitStack() as stack:
        yield {m.__name__: stack.enter_context(m.start_early(request)) for m in modules}


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """penguins/: train.csv, val.csv (comma), bad.csv (semicolon), zeroshot.csv, images/, models/tiny-vit-64/."""
    data = tmp_path_factory.mktemp("dataset") / "penguins"
    subprocess.run(
        [sys.executable, "-m", "trainer.sample_data", "--out", str(data), "--n", "96", "--val-n", "16", "--size", "64"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    (data / "bad.csv").write_text((data / "train.csv").read_text().replace(",", ";"))
    # zero-shot classes for spec.evaluation.zeroShot: each val image labelled with its caption
    (data / "zeroshot.csv").write_text((data / "val.csv").read_text().replace("filepath,caption", "filepath,label", 1))
    shutil.copytree(REPO / "examples/models/tiny-vit-64", data / "models/tiny-vit-64")
    return data


@pytest.fixture
def namespace(request, kube: Cluster):
    name = "e2e-" + request.node.name.replace("_", "-")[5:30].strip("-") + "-" + uuid.uuid4().hex[:5]
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
