"""The chart's two RBAC modes, proven by running the in-cluster controller under each.

Who uses it: ``make e2e``. Cluster-wide mode is what every other e2e test runs under; here the
release is switched to ``watch.namespaces=[<ns>]`` (a Role per watched namespace, no ClusterRole
for FineTuneJobs), a job in the watched namespace is reconciled to its end and a job in another
namespace is left alone, then the release goes back to cluster-wide.
"""

from __future__ import annotations

import time

import pytest
from e2e_helpers import debug, ftj, ftj_manifest, load_dataset

from devkit.wait import wait_for
from hack.deploy import deploy

pytestmark = pytest.mark.e2e


@pytest.fixture
def other_namespace(kube):
    name = f"e2e-unwatched-{int(time.time())}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_namespaced_rbac_mode_reconciles_only_watched_namespaces(kube, namespace, other_namespace, dataset_dir):
    deploy([namespace])
    try:
        roles = kube.kubectl("-n", namespace, "get", "rolebinding", "-o", "name").stdout
        assert "kubeclip" in roles, roles
        load_dataset(kube, namespace, dataset_dir)
        # the quickest full lifecycle: pods created, the trainer's preflight fails, status Failed
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=ftj_manifest("watched", train_csv="bad.csv"))
        kube.kubectl("-n", other_namespace, "apply", "-f", "-", input=ftj_manifest("unwatched"))
        wait_for(
            lambda: (ftj(kube, namespace, "watched").get("status") or {}).get("phase") == "Failed",
            240,
            "watched job Failed under namespaced RBAC",
            explain=debug(kube, namespace, "watched"),
            every_s=2,
        )
        assert not (ftj(kube, other_namespace, "unwatched").get("status") or {}).get("phase")
        assert kube.kubectl("-n", other_namespace, "get", "pods", "-o", "name").stdout.strip() == ""
    finally:
        deploy([])
    # back to cluster-wide: the job the namespaced controller ignored is now picked up
    wait_for(
        lambda: (ftj(kube, other_namespace, "unwatched").get("status") or {}).get("phase"),
        120,
        "unwatched job reconciled after going cluster-wide",
        explain=debug(kube, other_namespace, "unwatched"),
        every_s=2,
    )
