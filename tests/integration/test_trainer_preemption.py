"""Checkpoint on preemption: SIGTERM (or Ctrl-C) mid-run, every rank stops after its step, rank 0
writes a checkpoint at that step, and the rerun resumes there, not at the last periodic checkpoint.

Real processes, 2 ranks on gloo, loader workers on: the pod entry point ``python -m trainer.node``
gets SIGTERM alone, as the kubelet sends it to a container's first process on eviction or
``kubectl delete pod``; ``kubeclip run``'s whole process group gets SIGINT or SIGTERM, as a
terminal's Ctrl-C or a container runtime sends it. Periodic checkpoints are off
(``checkpointEverySteps: 0``) and the signal lands mid-epoch, so the only checkpoint there can be
is the one the signal caused; before trainer/preemption.py the rerun restarted from step 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trainer_node import pod_env
from trainer_helpers import REPO, VENV_BIN, env, manifest

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 12  # 96 rows / (batch 4 x 2 ranks)
EPOCHS = 2
SIGNAL_AT = 4  # the signal goes once progress.json shows this step
TRAINING = {
    "epochs": EPOCHS,
    "batchSize": 4,
    "workers": 2,
    "checkpointEverySteps": 0,
    "logEverySteps": 1,
}


def step_now(out: Path) -> int:
    try:
        p = json.loads((out / "progress.json").read_text())
    except (OSError, ValueError):
        return -1
    return p["step"] if p.get("phase") == "training" else -1


def signal_mid_run(proc: subprocess.Popen, out: Path, send) -> int:
    """Wait until the run is at SIGNAL_AT or later, call ``send``; return the step seen just before."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        step = step_now(out)
        if step >= SIGNAL_AT:
            send()
            return step
        time.sleep(0.05)
    raise AssertionError(f"the run never reached step {SIGNAL_AT} (exit {proc.poll()})")


def checkpoint_steps(out: Path) -> list[int]:
    d = out / "checkpoints"
    return sorted(int(p.stem.split("-")[1]) for p in d.glob("step-*.pt")) if d.is_dir() else []


def assert_stopped_at(out: Path, seen: int) -> int:
    steps = checkpoint_steps(out)
    assert len(steps) == 1, steps  # no periodic checkpoint; the signal's
    (stopped,) = steps
    # the current step finishes (the one in flight when the signal came, perhaps the next: the
    # ranks agree at a step boundary), and it is mid-epoch: no epoch-end checkpoint explains it
    assert seen <= stopped <= seen + 3, (seen, stopped)
    assert stopped < STEPS_PER_EPOCH, (seen, stopped)
    assert not (out / "final").exists()
    return stopped


def assert_resumed_at(log: str, out: Path, stopped: int) -> None:
    ckpt = out / "checkpoints" / f"step-{stopped:08d}.pt"
    assert f"resumed from {ckpt}: step {stopped} (epoch 0, step {stopped} of it)" in log, log[-3000:]
    first_logged = min(int(m) for m in re.findall(r"step (\d+)/\d+ epoch", log))
    assert first_logged == stopped + 1, first_logged  # the first step run is the one after the stop
    m = json.loads((out / "final" / "metrics.json").read_text())
    assert m["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert m["world_size"] == 2


def test_sigterm_to_the_pod_entrypoint_checkpoints_and_the_next_attempt_resumes_there(tmp_path):
    out = tmp_path / "out"
    job = manifest(tmp_path, "preempt-node", out, training=TRAINING)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    e = pod_env(2)
    e["KUBECLIP_TERMINATION_LOG"] = str(termination_log)
    e["PET_SHUTDOWN_TIMEOUT"] = "120"  # what the controller sets: spec.terminationGracePeriodSeconds
    with open(tmp_path / "node1.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.node", str(job)], stdout=log, stderr=subprocess.STDOUT, env=e, cwd=REPO
        )
        seen = signal_mid_run(proc, out, lambda: proc.send_signal(signal.SIGTERM))
        code = proc.wait(timeout=300)
    first = (tmp_path / "node1.log").read_text()
    assert code == 128 + signal.SIGTERM, first[-4000:]
    stopped = assert_stopped_at(out, seen)
    assert "Traceback" not in first, first[-4000:]
    # the pod's termination message (kubectl describe) says where it stopped
    message = termination_log.read_text()
    assert f"stopped by SIGTERM at step {stopped}: checkpoint {out / 'checkpoints'}" in message, message

    e = pod_env(2)
    e["KUBECLIP_TERMINATION_LOG"] = str(termination_log)
    rerun = subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)], capture_output=True, text=True, env=e, cwd=REPO, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert_resumed_at(rerun.stderr, out, stopped)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_kubeclip_run_stops_on_a_signal_to_its_process_group_and_its_rerun_resumes(tmp_path, sig):
    out = tmp_path / "out"
    job = manifest(tmp_path, "preempt-run", out, training=TRAINING)
    kubeclip = [str(VENV_BIN / "kubeclip"), "run", "--quiet", str(job)]
    with open(tmp_path / "run1.log", "w") as log:
        proc = subprocess.Popen(kubeclip, stdout=log, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
        seen = signal_mid_run(proc, out, lambda: os.killpg(proc.pid, sig))
        code = proc.wait(timeout=300)
    first = (tmp_path / "run1.log").read_text()
    assert code == 128 + sig, first[-4000:]
    stopped = assert_stopped_at(out, seen)
    ckpt = out / "checkpoints" / f"step-{stopped:08d}.pt"
    assert f"stopped by {sig.name}; the newest checkpoint is {ckpt}: run the same command to resume there" in first

    rerun = subprocess.run(kubeclip, capture_output=True, text=True, env=env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert_resumed_at(rerun.stdout + rerun.stderr, out, stopped)


def _ranks(root_pid: int) -> dict[int, int]:
    """{RANK: pid} of the training processes below ``root_pid`` (read from /proc)."""
    from test_trainer_resume import descendants

    found = {}
    for pid in descendants(root_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        rank = [e[5:] for e in environ if e.startswith(b"RANK=")]
        if rank and b"-m\0trainer" in cmdline and b"torchrun" not in cmdline:
            found.setdefault(int(rank[0]), pid)
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except OSError:
        return True


def test_a_rank_whose_peer_hangs_still_stops_on_sigterm(tmp_path):
    """The agent also sends SIGTERM to the survivors of a crashed rank; a survivor blocked in a
    collective with the dead peer never reaches a step boundary. The watchdog ends it (exit 143)
    instead of leaving it to the agent's SIGKILL after the whole grace period."""
    out = tmp_path / "out"
    job = manifest(tmp_path, "preempt-hang", out, training=dict(TRAINING, workers=0))
    e = env()
    e["KUBECLIP_STOP_WATCHDOG_S"] = "5"
    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "trainer", str(job)]
    with open(tmp_path / "hang.log", "w") as log:
        proc = subprocess.Popen(torchrun, stdout=log, stderr=subprocess.STDOUT, env=e, start_new_session=True)
        ranks: dict[int, int] = {}

        def freeze_rank_1_then_term_rank_0():
            ranks.update(_ranks(proc.pid))
            os.kill(ranks[1], signal.SIGSTOP)  # rank 1 hangs: rank 0 blocks in the next collective
            time.sleep(2)
            os.kill(ranks[0], signal.SIGTERM)

        signal_mid_run(proc, out, freeze_rank_1_then_term_rank_0)
        t0 = time.time()
        try:
            while not _gone(ranks[0]) and time.time() - t0 < 120:
                time.sleep(0.1)
            took = time.time() - t0
        finally:
            os.kill(ranks[1], signal.SIGKILL)
            proc.wait(timeout=120)
    text = (tmp_path / "hang.log").read_text()
    assert _gone(ranks[0]), (took, text[-3000:])
    assert took < 60, (took, text[-3000:])
    assert "no step boundary within" in text, text[-3000:]
    assert "stopping without a checkpoint" in text, text[-3000:]
    assert checkpoint_steps(out) == []
