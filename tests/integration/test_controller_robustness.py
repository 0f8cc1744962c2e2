"""A controller whose background task dies exits non-zero, and its restart carries on.

The real controller runs as a subprocess against the real API server (as the ServiceAccount bound
to the chart's rules), leader election on. Its resync loop then raises. That fault cannot be
produced for real any more (the race that raised KeyError there is gone: the requeue store is
private to Worker and locked), so the test injects it: a two-line wrapper replaces
``controller.operator.resync_loop`` with a coroutine that raises after a few seconds, then runs
the unchanged ``python -m controller`` main. Before this change such a process kept running as a
leader that no longer polled progress, deadlines or TTLs, and only gathered the task at shutdown.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import pytest
from controller_harness import controller_kubeconfig

from devkit.jobs import cluster_job
from devkit.operator import Operator, install_crd
from devkit.wait import wait_for

pytestmark = pytest.mark.cluster

ENV = {
    "KUBECLIP_LEASE_DURATION_SECONDS": "4",
    "KUBECLIP_RENEW_DEADLINE_SECONDS": "3",
    "KUBECLIP_RETRY_PERIOD_SECONDS": "0.5",
}
DYING = """
import asyncio, sys
import controller.operator as op

async def dying_resync_loop(*args):
    await asyncio.sleep(3)
    raise RuntimeError("injected: the resync loop crashed")

op.resync_loop = dying_resync_loop
import typer
from controller.cli import operator
sys.argv[0] = "controller"
typer.run(operator)
"""


@pytest.fixture(scope="module")
def setup(cluster, tmp_path_factory):
    created = install_crd(cluster.kubectl)
    sys_ns = f"kubeclip-system-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", sys_ns)
    d = tmp_path_factory.mktemp("robust")
    yield sys_ns, controller_kubeconfig(cluster, sys_ns, d / "kubeconfig"), d
    cluster.kubectl("delete", "namespace", sys_ns, "--wait=false", check=False)
    if created:
        cluster.kubectl("delete", "crd", "finetunejobs.kubeclip.dev", "--wait=false", check=False)


def test_a_dying_background_task_exits_non_zero_and_the_restart_takes_over(cluster, setup, namespace):
    sys_ns, kubeconfig, d = setup
    args = (f"--namespace={namespace}", f"--lease-namespace={sys_ns}")
    dying = Operator(kubeconfig, d / "dying.log", *args, env=ENV)
    dying.argv[1:3] = ["-c", DYING]  # python -c DYING <the same flags as python -m controller>
    dying.start()
    try:
        dying.wait_ready()
        try:
            rc = dying.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the controller kept running with a dead resync loop:\n{dying.log_tail()}")
        assert rc == 3, dying.log_tail()
        assert "resync loop died" in dying.log_path.read_text()
        assert "injected" in dying.log_path.read_text()
    finally:
        dying.stop(signal.SIGKILL)

    # What the Deployment does next: a fresh process. It gets the Lease (released on the way out)
    # and reconciles.
    fresh = Operator(kubeconfig, d / "fresh.log", *args, env=ENV).start()
    try:
        fresh.wait_ready()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(cluster_job("after", namespace)))
        wait_for(
            lambda: cluster.kubectl("get", "pod", "after-node-1", "-n", namespace, check=False).returncode == 0,
            30,
            "the restarted controller to create the job's pods",
            every_s=0.5,
        )
        assert fresh.proc.poll() is None, fresh.log_tail()
    finally:
        assert fresh.stop() == 0, fresh.log_tail()
