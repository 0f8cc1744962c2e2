"""Shared pytest fixtures: a real control plane for the whole session, a fresh namespace per test.

Who uses it: every test marked ``cluster`` (controller, chart, RBAC and smoke tests). The control
plane is ``devkit/controlplane.py`` (etcd + kube-apiserver + kube-controller-manager running
only the garbage collector, serviceaccount and namespace controllers); it is started once, on first
use, and torn down at the end of the session — also when tests fail or pytest is interrupted.

Fixtures:
  cluster    session: ``Cluster`` (devkit/cluster.py) with ``.kubeconfig``, ``.server``,
             ``.bin``, ``.kubectl(...)``, ``.helm(...)``, ``.api_client(...)``, ``.env()``,
             ``.restart_controller_manager()`` (after installing a CRD whose objects own others).
  namespace  function: name of a new namespace holding its ``default`` ServiceAccount; deleted after.

Missing binaries make the ``cluster`` fixture FAIL (never skip): run ``make tools``.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid

import pytest

from devkit.cluster import Cluster
from devkit.controlplane import ControlPlane, ControlPlaneError, client_bin_dir, find_binary, new_workdir

# How long the namespace fixture waits for the serviceaccount controller to create `default`.
DEFAULT_SA_WAIT_S = 30.0


@pytest.fixture(scope="session")
def _control_plane():
    try:  # binaries first: a missing build is reported without a stray temp dir
        for name in ("etcd", "kube-apiserver"):
            find_binary(name)
        client_bin_dir()
    except ControlPlaneError as e:
        error = str(e)
    else:
        error = None
    if error:
        pytest.fail(f"test control plane cannot start: {error}", pytrace=False)
    workdir = new_workdir()
    cp = ControlPlane(workdir, owned=True)
    t0 = time.monotonic()
    try:
        cp.start()
    except ControlPlaneError as e:
        error = f"test control plane did not start (logs kept in {workdir}):\n{e}"
    if error:
        pytest.fail(error, pytrace=False)
    print(f"\ncontrol plane up in {time.monotonic() - t0:.1f}s at {cp.server} (workdir {workdir})")
    yield cp
    cp.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(_control_plane: ControlPlane) -> Cluster:
    return Cluster(
        kubeconfig=str(_control_plane.kubeconfig),
        server=_control_plane.server,
        bin=str(client_bin_dir()),
        control_plane=_control_plane,
    )


def _namespace_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", nodeid.split("::")[-1].lower()).strip("-")[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(request, cluster: Cluster, _control_plane: ControlPlane):
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    name = _namespace_name(request.node.nodeid)
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"kubeclip.dev/test": "true"}))
        )
        # The ServiceAccount admission plugin rejects pods until `default` exists; the controller
        # manager's serviceaccount controller creates it. Without a controller manager we do.
        deadline = time.monotonic() + (DEFAULT_SA_WAIT_S if "kube-controller-manager" in _control_plane.procs else 0)
        while True:
            try:
                core.read_namespaced_service_account("default", name)
                break
            except ApiException as e:
                if e.status != 404:
                    raise
            if time.monotonic() >= deadline:
                try:
                    core.create_namespaced_service_account(
                        name, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default"))
                    )
                except ApiException as e:
                    if e.status != 409:
                        raise
                break
            time.sleep(0.1)
    yield name
    with cluster.api_client() as api:
        try:
            client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise
