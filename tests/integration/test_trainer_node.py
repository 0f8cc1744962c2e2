"""The pod entrypoint ``python -m trainer.node JOB.yaml``: preflight, then exec torchrun with PET_*.

Run as the pod would run it (the controller's env: ``PET_*`` plus the PyTorchJob-style ``RANK`` =
node index and ``WORLD_SIZE`` = all processes, which must not leak into the workers).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from trainer_helpers import REPO, env, manifest

from devkit.ports import free_port

pytestmark = pytest.mark.slow


def pod_env(nproc: int) -> dict:
    e = env()
    e.update(
        PET_NNODES="1",
        PET_NPROC_PER_NODE=str(nproc),
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(free_port()),
        RANK="0",
        NODE_RANK="0",
        WORLD_SIZE=str(nproc),
        KUBECLIP_JOB_NAME="node-test",
        KUBECLIP_NAMESPACE="default",
    )
    return e


def test_node_entrypoint_runs_torchrun_with_the_pet_env(tmp_path):
    out = tmp_path / "out"
    job = manifest(
        tmp_path, "node-test", out, training={"epochs": 1, "batchSize": 8, "workers": 0, "checkpointEverySteps": 0}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)],
        capture_output=True,
        text=True,
        env=pod_env(2),
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "preflight ok: train 96 rows" in proc.stderr
    m = json.loads((out / "final" / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["steps"] == 6


def test_node_entrypoint_exits_3_on_a_bad_dataset(tmp_path):
    out = tmp_path / "out"
    job = manifest(tmp_path, "node-bad", out, training={"epochs": 1, "batchSize": 64})  # 96 rows < 64 x 2
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)],
        capture_output=True,
        text=True,
        env=pod_env(2),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("preflight: spec.dataset.trainCsv")
    assert "fewer than one optimizer step needs (batchSize 64 x 2 processes" in proc.stderr
    assert not out.exists() or not (out / "final").exists()


def test_node_entrypoint_exits_2_on_a_bad_manifest(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("kind: FineTuneJob\napiVersion: kubeclip.dev/v1alpha1\nspec: {model: {name: x}, oops: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)],
        capture_output=True,
        text=True,
        env=pod_env(1),
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "spec.oops" in proc.stderr


# ---- the real cause of a failure reaches the container (issue #9) --------------------------------

CRASH = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
if rank == 1:
    how = sys.argv[1]
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    sys.exit(int(how))
time.sleep(60)  # rank 0 is the knock-on victim: torchrun stops it when rank 1 dies
"""


def _torchrun_here(tmp_path, how: str) -> tuple[int, str]:
    """trainer.node.run_torchrun on a real torchrun with 2 workers, rank 1 dying as ``how``."""
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    log = tmp_path / "termination-log"
    log.write_text("")
    driver = (
        "import sys; from trainer.node import run_torchrun; "
        f"sys.exit(run_torchrun(['--nnodes=1', '--nproc-per-node=2', '--master-port={free_port()}', "
        f"'{script}', '{how}'], termination_log='{log}'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, env=env(), cwd=REPO, timeout=120
    )
    return proc.returncode, log.read_text()


def test_a_worker_killed_by_a_signal_exits_128_plus_n_with_the_signal_named(tmp_path):
    """The torchrun command exits 1 here, which the controller would take for a trainer error."""
    code, message = _torchrun_here(tmp_path, "segv")
    assert code == 128 + 11
    assert "rank 1" in message
    assert "SIGSEGV" in message


def test_a_workers_own_exit_code_reaches_the_container(tmp_path):
    code, _ = _torchrun_here(tmp_path, "4")  # EXIT_NONFINITE: a final verdict of the trainer
    assert code == 4


def test_a_non_zero_node_waits_for_node_0_then_gives_up_with_exit_6(tmp_path):
    """Node 1 starts while node 0's address does not answer: it waits (no instant torchrun
    failure) for spec.rendezvousTimeoutSeconds, then ends with its own exit code and one line."""
    import time

    import yaml

    job = manifest(tmp_path, "node-wait", tmp_path / "out", training={"epochs": 1, "batchSize": 8}, nproc=1)
    doc = yaml.safe_load(job.read_text())
    doc["spec"].update(numNodes=2, rendezvousTimeoutSeconds=10)
    job.write_text(yaml.safe_dump(doc))
    e = pod_env(1)
    e.update(PET_NNODES="2", PET_NODE_RANK="1", NODE_RANK="1")  # PET_MASTER_PORT: a free port nobody listens on
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)], capture_output=True, text=True, env=e, cwd=REPO, timeout=120
    )
    assert proc.returncode == 6, proc.stderr[-2000:]
    assert time.monotonic() - t0 >= 10
    assert "waiting for node 0 at 127.0.0.1" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("rendezvous: node 0 not reachable after 10s")


def test_wait_for_master_returns_once_node_0_listens():
    import threading
    import time

    from trainer.node import RendezvousTimeout, wait_for_master

    port = free_port()
    server = socket.socket()

    def listen_later():
        time.sleep(1.0)
        server.bind(("127.0.0.1", port))
        server.listen()

    threading.Thread(target=listen_later).start()
    t0 = time.monotonic()
    wait_for_master("127.0.0.1", port, 20, interval_s=0.2)
    assert 0.9 <= time.monotonic() - t0 < 10
    server.close()
    with pytest.raises(RendezvousTimeout, match="does not resolve"):
        wait_for_master("no-such-host.invalid", port, 0.5, interval_s=0.2)


def test_resuming_across_a_changed_batch_size_is_refused_with_exit_5(tmp_path):
    """A real run writes checkpoints; the same output with another batchSize must not resume from
    them (the data position would mean other samples): one line naming the field, exit 5."""
    import yaml

    out = tmp_path / "out"
    job = manifest(
        tmp_path, "fp", out, training={"epochs": 1, "batchSize": 8, "workers": 0, "checkpointEverySteps": 2}, nproc=1
    )
    first = subprocess.run(
        [sys.executable, "-m", "trainer", str(job)], capture_output=True, text=True, env=env(), cwd=REPO, timeout=600
    )
    assert first.returncode == 0, first.stderr[-3000:]
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["training"]["batchSize"] = 4
    job.write_text(yaml.safe_dump(doc))
    second = subprocess.run(
        [sys.executable, "-m", "trainer", str(job)], capture_output=True, text=True, env=env(), cwd=REPO, timeout=600
    )
    assert second.returncode == 5, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert "cannot resume this job: spec.training.batchSize was 8, now 4" in last
    assert last.startswith("checkpoint step-")
