"""Resumable checkpoints under ``<output.path>/checkpoints/``: atomic, pruned, complete, checked.

Who uses it: ``trainer.train`` (rank 0 writes; every rank reads the latest readable one on start).

A checkpoint file ``step-00000123.pt`` holds everything the next step depends on: model weights,
AdamW moments, optimizer step, GradScaler state, the RNG states of every rank (python, numpy,
torch CPU and CUDA, all as tensors and plain types), the data position (epoch, step within the
epoch) and the config fingerprint (:func:`fingerprint`). It is written to a temporary name in the
same directory, fsynced, then ``os.replace``d into place, so a process killed mid-write leaves
either the previous checkpoint or the new one, never a torn file; a write that fails (a full
disk) removes its temporary file, and temporary files of dead writers are removed by the next
save. The output directory must be shared by all nodes (a PVC in the cluster) for resume to find it.

Reading is ``torch.load(weights_only=True)``: the volume is shared, and a checkpoint must not be
able to run code. :func:`load_latest` falls back to the previous checkpoint when the latest
cannot be read (one ``checkpoint: ... falling back`` warning line, which the progress reports),
and refuses with :class:`kubeclip.api.CheckpointMismatch` (exit 5) when a field that breaks
resume changed since it was written.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubeclip.api import CheckpointMismatch, TrainerSpec

NAME = re.compile(r"^step-(\d{8})\.pt$")
TEMP = re.compile(r"^\.step-\d{8}\.pt\.tmp-(\d+)$")

#: Fields of the trainer spec a checkpoint cannot be resumed across: the architecture (weights
#: would not load), the frozen towers (the optimizer's parameter groups), and what defines the
#: data position (per-process batch size, accumulation, the seed of the shuffle).
RESUME_FIELDS = (
    "model.name",
    "training.lockImage",
    "training.lockText",
    "training.batchSize",
    "training.gradAccumSteps",
    "training.seed",
)

log = logging.getLogger(__name__)


def directory(output: str) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str) -> list[Path]:
    """Committed checkpoints, oldest first (temporary files are ignored)."""
    d = directory(output)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(output: str) -> Path | None:
    found = list_checkpoints(output)
    return found[-1] if found else None


def fingerprint(spec: TrainerSpec) -> dict[str, Any]:
    """The values of :data:`RESUME_FIELDS` (dotted path -> value), stored in every checkpoint."""
    out = {}
    for path in RESUME_FIELDS:
        value: Any = spec
        for part in path.split("."):
            value = getattr(value, part)
        out[path] = value
    return out


def check_resumable(state: dict, spec: TrainerSpec, path: Path) -> None:
    """Raise :class:`CheckpointMismatch` naming each field that changed since ``path`` was written."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        return  # written before fingerprints existed: nothing to compare
    now = fingerprint(spec)
    changed = [
        f"spec.{k} was {stored[k]!r}, now {now[k]!r}" for k in RESUME_FIELDS if k in stored and stored[k] != now[k]
    ]
    if changed:
        raise CheckpointMismatch(
            f"checkpoint {path.name} cannot resume this job: {'; '.join(changed)}; "
            f"restore the old values or use a new output.path"
        )


def rng_state() -> dict:
    """Every RNG of this process, as tensors and plain Python values (weights_only-loadable)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples; a round trip may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _fsync_dir(d: Path) -> None:
    try:  # make a rename durable
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _remove_dead_temps(d: Path) -> None:
    """Temporary files of writers that died mid-write (a killed pod): never committed, only space."""
    for p in d.iterdir():
        m = TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid():
            p.unlink(missing_ok=True)


def save(output: str, step: int, state: dict, keep: int, *, spec: TrainerSpec | None = None) -> Path:
    """Atomically write ``state`` as the checkpoint of optimizer step ``step``; prune old ones.
    With ``spec``, its :func:`fingerprint` is stored too. On a failed write (disk full) the
    temporary file is removed, the previous checkpoints are untouched, and the error propagates."""
    d = directory(output)
    d.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(d)
    if spec is not None:
        state = {**state, "config": fingerprint(spec)}
    final = d / f"step-{step:08d}.pt"
    tmp = d / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    for old in list_checkpoints(output)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load(path: Path) -> dict:
    """Read one checkpoint: tensors and plain types only (``weights_only=True``: loading cannot run code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_latest(
    output: str, spec: TrainerSpec | None = None, skipped: list[str] | None = None
) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that can be read, falling back to older ones with a warning line
    each; ``(None, None)`` when there is none. Raises :class:`CheckpointMismatch` when the one
    found cannot resume ``spec``, and ``OSError`` when checkpoints exist but none can be read
    (starting over silently would throw their training away). Each checkpoint passed over is
    appended to ``skipped`` as ``"name: reason"`` (the progress reports it; the controller posts a
    Warning event)."""
    found = list_checkpoints(output)
    errors = []
    for path in reversed(found):
        try:
            state = load(path)
        except Exception as err:
            reason = " ".join(str(err).split())[:200] or type(err).__name__
            errors.append(f"{path.name}: {reason}")
            if skipped is not None:
                skipped.append(errors[-1])
            log.warning("checkpoint: %s cannot be read (%s); falling back to the previous one", path.name, reason)
            continue
        if spec is not None:
            check_resumable(state, spec, path)
        if errors:
            log.warning("checkpoint: resuming from %s after %d unreadable newer checkpoint(s)", path.name, len(errors))
        return path, state
    if found:
        raise OSError(
            f"checkpoint: none of the {len(found)} checkpoint(s) in {directory(output)} can be read "
            f"({'; '.join(errors)}); move them away to start over"
        )
    return None, None
