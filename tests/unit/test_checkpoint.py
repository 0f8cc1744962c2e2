"""Checkpoints that survive bad files (trainer/checkpoint.py): real torch files on a real disk.

Corruption is real (a truncated file, a pickle that would run code), the full disk is real (a
write past RLIMIT_FSIZE fails with EFBIG in a child process), and the RNG round trip goes
through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kubeclip.api import (
    EXIT_CHECKPOINT_UNREADABLE,
    FINAL_EXIT_CODES,
    CheckpointMismatch,
    CheckpointUnreadable,
    parse_spec,
)
from trainer import checkpoint

REPO = Path(__file__).resolve().parents[2]


def spec(**training):
    return parse_spec(
        {
            "model": {"name": "ViT-B-32"},
            "dataset": {"trainCsv": "/d/t.csv"},
            "output": {"path": "/o"},
            "training": {"batchSize": 8, **training},
        }
    )


def state(step):
    return {
        "model": {"w": torch.full((4,), float(step))},
        "step": step,
        "epoch": 0,
        "step_in_epoch": step,
        "world": 1,
        "rng": [checkpoint.rng_state()],
    }


class RunsCode:
    """A pickle payload that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_latest_unreadable_falls_back_to_the_previous_with_a_warning(tmp_path, caplog):
    out = str(tmp_path)
    checkpoint.save(out, 10, state(10), keep=3)
    newest = checkpoint.save(out, 20, state(20), keep=3)
    newest.write_bytes(newest.read_bytes()[:100])  # torn by a storage fault
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        skipped: list = []
        path, st = checkpoint.load_latest(out, skipped=skipped)
    assert path.name == "step-00000010.pt"
    assert st["step"] == 10
    assert torch.equal(st["model"]["w"], torch.full((4,), 10.0))
    assert len(skipped) == 1
    assert skipped[0].startswith("step-00000020.pt: ")
    assert any(
        "step-00000020.pt cannot be read" in r.getMessage() and "falling back" in r.getMessage() for r in caplog.records
    )


def test_checkpoints_are_loaded_weights_only_and_a_code_pickle_is_refused(tmp_path):
    out = str(tmp_path / "o")
    checkpoint.save(out, 10, state(10), keep=3)
    marker = tmp_path / "code-ran"
    evil = checkpoint.directory(out) / "step-00000020.pt"
    torch.save({"step": 20, "payload": RunsCode(marker)}, evil)
    path, st = checkpoint.load_latest(out)
    assert not marker.exists(), "loading a checkpoint ran code"
    assert path.name == "step-00000010.pt"
    assert st["step"] == 10


def test_no_readable_checkpoint_is_a_final_one_line_verdict_not_a_silent_fresh_start(tmp_path):
    out = str(tmp_path)
    checkpoint.save(out, 10, state(10), keep=3).write_bytes(b"garbage")
    with pytest.raises(
        CheckpointUnreadable, match=r"none of the 1 checkpoint\(s\) in .* can be read .*move them away"
    ) as e:
        checkpoint.load_latest(out)
    # A retry reads the same files: the controller must not retry it (issue 18, item 11).
    assert e.value.exit_code == EXIT_CHECKPOINT_UNREADABLE
    assert EXIT_CHECKPOINT_UNREADABLE in FINAL_EXIT_CODES
    assert "\n" not in str(e.value)
    assert checkpoint.load_latest(str(tmp_path / "empty")) == (None, None)


def test_temp_names_are_unique_per_write_not_per_pid(tmp_path):
    final = tmp_path / "step-00000001.pt"
    names = {checkpoint.temp_name(final).name for _ in range(100)}
    assert len(names) == 100
    assert all(checkpoint.TEMP.match(n) for n in names)


def test_another_writers_in_flight_temp_survives_a_save_and_a_stale_one_goes(tmp_path):
    """Two containers have equal PIDs: a temp file named after a PID that is not ours may be a
    live writer's (another job on the same volume). Only stale temps are removed."""
    out = str(tmp_path)
    d = checkpoint.directory(out)
    d.mkdir(parents=True)
    in_flight = d / f".step-00000007.pt.tmp-{os.getpid() + 1}"  # the old naming, another writer
    in_flight.write_bytes(b"half written")
    stale = d / ".step-00000003.pt.tmp-0123abcd0123abcd"
    stale.write_bytes(b"dead")
    old = time.time() - checkpoint.DEAD_TEMP_AGE_S - 60
    os.utime(stale, (old, old))
    checkpoint.save(out, 10, state(10), keep=3)
    assert in_flight.read_bytes() == b"half written"
    assert not stale.exists()


def test_another_dataset_does_not_resume_the_checkpoint(tmp_path):
    out = str(tmp_path)
    s = spec()
    first = {"dataset.trainCsv": "sha256:aaa (96 rows)", "dataset.valCsv": "none"}
    checkpoint.save(out, 10, state(10), keep=3, spec=s, dataset=first)
    assert checkpoint.load_latest(out, s, dataset=first)[1]["step"] == 10
    other = {"dataset.trainCsv": "sha256:bbb (96 rows)", "dataset.valCsv": "none"}
    with pytest.raises(
        CheckpointMismatch, match=r"spec.dataset.trainCsv was 'sha256:aaa \(96 rows\)', now 'sha256:bbb"
    ):
        checkpoint.load_latest(out, s, dataset=other)


def test_rng_states_round_trip_through_weights_only_loading(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    checkpoint.save(str(tmp_path), 1, {"rng": [checkpoint.rng_state()]}, keep=1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _, st = checkpoint.load_latest(str(tmp_path))
    checkpoint.set_rng_state(st["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_changed_field_that_breaks_resume_is_refused_by_name(tmp_path):
    out = str(tmp_path)
    checkpoint.save(out, 10, state(10), keep=3, spec=spec())
    assert checkpoint.load_latest(out, spec(learningRate=1e-3))[1]["step"] == 10  # harmless change
    with pytest.raises(CheckpointMismatch) as err:
        checkpoint.load_latest(out, spec(batchSize=16, lockText=True))
    line = str(err.value)
    assert "\n" not in line
    assert "step-00000010.pt cannot resume this job" in line
    assert "spec.training.batchSize was 8, now 16" in line
    assert "spec.training.lockText was False, now True" in line
    assert err.value.exit_code == 5


FULL_DISK = """
import os, resource, signal, sys, torch
from trainer import checkpoint
out = sys.argv[1]
checkpoint.save(out, 1, {"w": torch.zeros(4)}, keep=5)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    checkpoint.save(out, 2, {"w": torch.zeros(1 << 20)}, keep=5)  # 4 MiB > 1 MiB
except Exception as err:  # torch's zip writer reports EFBIG as a RuntimeError
    print("failed:", type(err).__name__)
"""


def test_a_failed_write_leaves_no_temporary_file_and_the_previous_checkpoint(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(out)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed:" in proc.stdout, proc.stderr[-2000:]
    assert sorted(p.name for p in checkpoint.directory(str(out)).iterdir()) == ["step-00000001.pt"]


def test_temporary_files_of_dead_writers_are_removed_by_the_next_save(tmp_path):
    d = checkpoint.directory(str(tmp_path))
    d.mkdir(parents=True)
    dead = d / ".step-00000005.pt.tmp-999999"
    dead.write_bytes(b"x" * 1000)
    old = time.time() - checkpoint.DEAD_TEMP_AGE_S - 1  # untouched for longer than any live write
    os.utime(dead, (old, old))
    checkpoint.save(str(tmp_path), 6, {"w": torch.zeros(1)}, keep=2)
    assert sorted(p.name for p in d.iterdir()) == ["step-00000006.pt"]
