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
resume changed since it was written, the dataset included (:func:`fingerprint`), and with
:class:`kubeclip.api.CheckpointUnreadable` (exit 8, final: re-reading the same files fails the same
way) when checkpoints exist but none can be read.

Temporary names are ``.step-N.pt.tmp-<random hex>``, unique per write (container PIDs are equal
across pods, so a PID in the name could collide with another writer's). A temporary file is
removed as dead only once it has not been modified for :data:`DEAD_TEMP_AGE_S`: a writer in
flight keeps its file fresh, and nothing but a stale file is ever deleted.
"""

from __future__ import annotations

import logging
import os
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kubeclip.api import CheckpointMismatch, CheckpointUnreadable, TrainerSpec
from trainer.table import Rows

NAME = re.compile(r"^step-(\d{8})\.pt$")
#: Temporary files of this module (``-<hex>``: unique per write) and of older versions (``-<pid>``).
TEMP = re.compile(r"^\.step-\d{8}\.pt\.tmp-[0-9a-f]+$")
#: A temporary file untouched for this long belongs to a dead writer (a killed pod). A live one is
#: written continuously (torch.save streams into it) and renamed within seconds of its last write;
#: an hour is far beyond any stall of a shared filesystem.
DEAD_TEMP_AGE_S = 3600.0

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
    "dataset.root",
    "dataset.imageColumn",
    "dataset.captionColumn",
)
#: The dataset's identity (:func:`dataset_identity`), stored beside :data:`RESUME_FIELDS`: a
#: checkpoint of other rows names other samples at the same data position.
DATASET_FIELDS = ("dataset.trainCsv", "dataset.valCsv")

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


def dataset_identity(train: Rows, val: Rows | None = None) -> dict[str, str]:
    """``{"dataset.trainCsv": "sha256:<hex> (<n> rows)", "dataset.valCsv": ...}`` of the tables the
    run trains and evaluates on (``trainer.rowtable.RowTable.digest``: the SHA-256 of the CSV's
    bytes, computed once per node while the table is built). The content, not the path or the
    mtime: a dataset copied afresh into a volume at every attempt is the same dataset, and an
    edited CSV under the same name is not."""
    out = {}
    for key, table in (("dataset.trainCsv", train), ("dataset.valCsv", val)):
        out[key] = f"sha256:{table.digest} ({len(table)} rows)" if table is not None and table.digest else "none"
    return out


def fingerprint(spec: TrainerSpec, dataset: dict[str, str] | None = None) -> dict[str, Any]:
    """The values of :data:`RESUME_FIELDS` (dotted path -> value), with ``dataset``
    (:func:`dataset_identity`) when given; stored in every checkpoint."""
    out: dict[str, Any] = {}
    for path in RESUME_FIELDS:
        value: Any = spec
        for part in path.split("."):
            value = getattr(value, part)
        out[path] = value
    out.update(dataset or {})
    return out


def check_resumable(state: dict, spec: TrainerSpec, path: Path, dataset: dict[str, str] | None = None) -> None:
    """Raise :class:`CheckpointMismatch` naming each field that changed since ``path`` was written.

    A checkpoint written with a dataset identity is refused when the dataset differs (one line,
    exit 5, nothing deleted): resuming would continue someone else's data position on other rows
    and, after a finished run, export the old weights as this job's model. The user picks: a new
    ``output.path`` (start fresh) or the old CSV."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        return  # written before fingerprints existed: nothing to compare
    now = fingerprint(spec, dataset)
    keys = RESUME_FIELDS + (DATASET_FIELDS if dataset else ())
    changed = [f"spec.{k} was {stored[k]!r}, now {now[k]!r}" for k in keys if k in stored and stored[k] != now[k]]
    if changed:
        raise CheckpointMismatch(
            f"checkpoint {path.name} cannot resume this job: {'; '.join(changed)}; "
            f"restore the old values or use a new output.path"
        )


def rng_state() -> dict:
    """Every RNG of this process, as tensors and plain Python values (weights_only-loadable)."""
    legacy = np.random.get_state()
    if isinstance(legacy, dict):  # only a global generator other than MT19937 has no legacy state
        raise RuntimeError(f"numpy's global generator is {legacy.get('bit_generator')}, expected MT19937")
    name, keys, pos, has_gauss, gauss = legacy
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


def _remove_dead_temps(d: Path, now: float | None = None) -> None:
    """Temporary files of writers that died mid-write (a killed pod): never committed, only space.
    Only files untouched for :data:`DEAD_TEMP_AGE_S` go: another writer's file in flight is fresh."""
    now = time.time() if now is None else now
    for p in d.iterdir():
        if not TEMP.match(p.name):
            continue
        try:
            if now - p.stat().st_mtime > DEAD_TEMP_AGE_S:
                p.unlink(missing_ok=True)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            pass


def temp_name(final: Path) -> Path:
    """A name no other writer uses: 64 random bits (PIDs repeat across containers)."""
    return final.parent / f".{final.name}.tmp-{secrets.token_hex(8)}"


def save(
    output: str,
    step: int,
    state: dict,
    keep: int,
    *,
    spec: TrainerSpec | None = None,
    dataset: dict[str, str] | None = None,
) -> Path:
    """Atomically write ``state`` as the checkpoint of optimizer step ``step``; prune old ones.
    With ``spec``, its :func:`fingerprint` (with ``dataset``, :func:`dataset_identity`) is stored
    too. On a failed write (disk full) the temporary file is removed, the previous checkpoints
    are untouched, and the error propagates."""
    d = directory(output)
    d.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(d)
    if spec is not None:
        state = {**state, "config": fingerprint(spec, dataset)}
    final = d / f"step-{step:08d}.pt"
    tmp = temp_name(final)
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
    output: str,
    spec: TrainerSpec | None = None,
    skipped: list[str] | None = None,
    dataset: dict[str, str] | None = None,
) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that can be read, falling back to older ones with a warning line
    each; ``(None, None)`` when there is none. Raises :class:`CheckpointMismatch` when the one
    found cannot resume ``spec`` (and ``dataset``, :func:`dataset_identity`), and
    :class:`CheckpointUnreadable` (final: the same files fail the same way on a retry) when
    checkpoints exist but none can be read (starting over silently would throw their training away). Each checkpoint passed over is
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
            check_resumable(state, spec, path, dataset)
        if errors:
            log.warning("checkpoint: resuming from %s after %d unreadable newer checkpoint(s)", path.name, len(errors))
        return path, state
    if found:
        raise CheckpointUnreadable(
            f"checkpoint: none of the {len(found)} checkpoint(s) in {directory(output)} can be read "
            f"({'; '.join(errors)}); move them away to start over"
        )
    return None, None
