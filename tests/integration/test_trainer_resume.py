"""Exact resume: a 2-process run killed with SIGKILL after a checkpoint, then restarted with the same
command, ends with the same weights as an uninterrupted run.

Real processes: ``torchrun --nproc_per_node 2 -m trainer`` (gloo, CPU). The kill is a real
SIGKILL to every process of the run (torchrun, both ranks, loader workers) at once, as a node
loss or the kubelet killing the container would do. The uninterrupted run uses ``workers: 0`` and the interrupted one
``workers: 2``: augmentation is seeded per sample and epoch, so the worker count must not matter.

Weights are compared with ``torch.equal`` (bit-exact), not allclose: both runs execute the same
float operations in the same order (same data order, same thread count, a 2-rank gloo sum is
order-independent), so any difference at all would mean some state was not restored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from trainer_helpers import VENV_BIN, env, manifest

pytestmark = pytest.mark.slow

TRAINING = {"epochs": 3, "batchSize": 8, "checkpointEverySteps": 3, "keepCheckpoints": 2, "logEverySteps": 1}


def torchrun(job, log):
    return subprocess.Popen(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "trainer", str(job)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env(),
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in new sessions, so a process-group
    kill would miss them; in a pod the kubelet kills the whole container, workers included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def kill_tree(pid: int) -> int:
    procs = descendants(pid)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return len(procs)


def load_final(out):
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "open_clip_model.safetensors"))


def test_sigkill_and_restart_gives_the_same_weights(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    job_a = manifest(tmp_path, "resume-a", out_a, training=dict(TRAINING, workers=0))
    job_b = manifest(tmp_path, "resume-b", out_b, training=dict(TRAINING, workers=2))

    with open(tmp_path / "a.log", "w") as log:
        assert torchrun(job_a, log).wait(timeout=600) == 0, (tmp_path / "a.log").read_text()[-3000:]

    # Run B: kill everything once the first checkpoint (step 3 of 6 in epoch 0) is committed.
    with open(tmp_path / "b1.log", "w") as log_b:  # torchrun keeps its own descriptor
        proc = torchrun(job_b, log_b)
    ckpt_dir = out_b / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir() and any(p.name.startswith("step-") for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run B ended before it could be killed:\n" + (tmp_path / "b1.log").read_text()[-3000:]
    assert kill_tree(proc.pid) >= 3  # torchrun + 2 ranks (+ their loader workers)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    time.sleep(0.5)  # let the killed ranks' sockets go
    assert not (out_b / "final").exists(), "run B finished before the kill: the test proves nothing"
    killed_at = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-"))

    with open(tmp_path / "b2.log", "w") as log:
        assert torchrun(job_b, log).wait(timeout=600) == 0, (tmp_path / "b2.log").read_text()[-3000:]
    restarted = (tmp_path / "b2.log").read_text()
    assert f"resumed from {ckpt_dir / killed_at[-1]}" in restarted, restarted[-3000:]

    a, b = load_final(out_a), load_final(out_b)
    assert a.keys() == b.keys()
    import torch

    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    # pruning kept the newest keepCheckpoints, the last one written at the end of the last epoch
    from trainer.checkpoint import list_checkpoints

    kept = list_checkpoints(str(out_b))
    assert len(kept) == TRAINING["keepCheckpoints"], kept
    assert kept[-1].name == "step-00000018.pt"  # 3 epochs x (96 rows / (8 x 2)) steps
