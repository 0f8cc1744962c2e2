"""Resumable checkpoints under ``<output.path>/checkpoints/``: atomic, pruned, complete.

Who uses it: ``trainer.train`` (rank 0 writes; every rank reads the latest one on start).

A checkpoint file ``step-00000123.pt`` holds everything the next step depends on: model weights,
AdamW moments, optimizer step, GradScaler state, the RNG states of every rank (python, numpy,
torch CPU and CUDA) and the data position (epoch, step within the epoch). It is written to a
temporary name in the same directory, fsynced, then ``os.replace``d into place, so a process
killed mid-write leaves either the previous checkpoint or the new one, never a torn file. The
output directory must be shared by all nodes (a PVC in the cluster) for resume to find it.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

NAME = re.compile(r"^step-(\d{8})\.pt$")


def directory(output: str) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str) -> list[Path]:
    """Committed checkpoints, oldest first (temporary files are ignored)."""
    d = directory(output)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(output: str) -> Optional[Path]:
    found = list_checkpoints(output)
    return found[-1] if found else None


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(output: str, step: int, state: dict, keep: int) -> Path:
    """Atomically write ``state`` as the checkpoint of optimizer step ``step``; prune old ones."""
    d = directory(output)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step-{step:08d}.pt"
    tmp = d / f".{final.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    for old in list_checkpoints(output)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load(path: Path) -> dict:
    # weights_only=False: the file holds numpy/python RNG states; it is our own output directory.
    return torch.load(path, map_location="cpu", weights_only=False)
