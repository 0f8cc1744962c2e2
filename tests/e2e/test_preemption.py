"""Checkpoint on preemption on the real node: ``kubectl delete pod`` of node 0 mid-run.

Who uses it: ``make e2e``. The kubelet sends SIGTERM to node 0's container and waits
``spec.terminationGracePeriodSeconds`` (the pod spec carries it, default 300); torchrun's agent
forwards it to the ranks (``PET_SHUTDOWN_TIMEOUT``), the ranks of both nodes agree at the next step
boundary, rank 0 writes a checkpoint there and the pods exit. Periodic checkpoints are off
(``checkpointEverySteps: 0``: only epoch ends, which resume at step 0 of the next epoch), so the
next attempt resumes inside an epoch only from the SIGTERM checkpoint; before trainer/preemption.py
it resumed from the last epoch end. Once the next attempt has run the step after the checkpoint the
job is deleted: running it to Succeeded would prove nothing more.
"""

from __future__ import annotations

import json

import pytest
from e2e_helpers import debug, ftj, ftj_manifest, load_dataset, wait_resumed
from test_finetune import _phase, _run_until, _step

from devkit.wait import wait_for

pytestmark = pytest.mark.e2e

STEPS_PER_EPOCH = 6  # 96 rows / (batch 8 x 2 nodes)


def test_node_0_deleted_mid_run_resumes_at_the_step_it_reached(kube, namespace, dataset_dir):
    name = "preempt"
    load_dataset(kube, namespace, dataset_dir)
    kube.kubectl(
        "-n", namespace, "apply", "-f", "-", input=ftj_manifest(name, epochs=10, checkpoint_every=0, backoff=0)
    )
    explain = debug(kube, namespace, name)
    seen = wait_for(
        lambda: (s := _step(kube, namespace, name)) >= STEPS_PER_EPOCH and s,
        900,
        f"{name}: past the first epoch",
        explain=explain,
        every_s=0.5,
    )
    assert _phase(kube, namespace, name) == "Running"
    pod = json.loads(kube.kubectl("-n", namespace, "get", "pod", f"{name}-node-0", "-o", "json").stdout)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 300, pod["spec"]
    kube.kubectl("-n", namespace, "delete", "pod", f"{name}-node-0", "--wait=false")
    _run_until(kube, namespace, name, ("Restarting",), 400)
    # the next attempt resumed and ran a step past the checkpoint: proven, so the job is deleted
    # instead of run to Succeeded (test_finetune.py's 2-node job proves that)
    resumed, first = wait_resumed(kube, namespace, name, explain)
    status = ftj(kube, namespace, name)["status"]
    assert status["restartCount"] == 1, status
    assert status.get("disruptedAttempts") == 1, status
    step, in_epoch = int(resumed.group(2)), int(resumed.group(4))
    # an epoch-end checkpoint resumes at "(epoch E+1, step 0 of it)"; only the SIGTERM one mid-epoch
    # (or right after an epoch's last step, before its eval: "step 6 of it")
    assert step >= seen, (resumed.group(0), seen)
    assert 0 < in_epoch <= STEPS_PER_EPOCH, (resumed.group(0), seen)
    # the first step the new attempt ran is the one after the checkpoint
    assert first == step + 1, (resumed.group(0), first)
    kube.kubectl("-n", namespace, "delete", "ftj", name, "--wait=false")
