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

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_env(nproc: int) -> dict:
    e = env()
    e.update(PET_NNODES="1", PET_NPROC_PER_NODE=str(nproc), PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1",
             PET_MASTER_PORT=str(free_port()), RANK="0", NODE_RANK="0", WORLD_SIZE=str(nproc),
             KUBECLIP_JOB_NAME="node-test", KUBECLIP_NAMESPACE="default")
    return e


def test_node_entrypoint_runs_torchrun_with_the_pet_env(tmp_path):
    out = tmp_path / "out"
    job = manifest(tmp_path, "node-test", out, training={"epochs": 1, "batchSize": 8, "workers": 0, "checkpointEverySteps": 0})
    proc = subprocess.run([sys.executable, "-m", "trainer.node", str(job)], capture_output=True, text=True,
                          env=pod_env(2), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "preflight ok: train 96 rows" in proc.stderr
    m = json.loads((out / "final" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 6


def test_node_entrypoint_exits_3_on_a_bad_dataset(tmp_path):
    out = tmp_path / "out"
    job = manifest(tmp_path, "node-bad", out, training={"epochs": 1, "batchSize": 64})  # 96 rows < 64 x 2
    proc = subprocess.run([sys.executable, "-m", "trainer.node", str(job)], capture_output=True, text=True,
                          env=pod_env(2), cwd=REPO, timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("preflight: spec.dataset.trainCsv")
    assert "fewer than one optimizer step needs (batchSize 64 x 2 processes" in proc.stderr
    assert not out.exists() or not (out / "final").exists()


def test_node_entrypoint_exits_2_on_a_bad_manifest(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("kind: FineTuneJob\napiVersion: kubeclip.dev/v1alpha1\nspec: {model: {name: x}, oops: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "trainer.node", str(job)], capture_output=True, text=True,
                          env=pod_env(1), cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "spec.oops" in proc.stderr
