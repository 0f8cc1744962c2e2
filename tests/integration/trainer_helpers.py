"""Helpers for the trainer's integration tests: a dataset, a manifest on it, the subprocess environment, promtool.

Who uses it: ``tests/integration/test_trainer_*.py``. Everything is real: the generated dataset
is PNG files on disk, the model is a real (tiny) OpenCLIP CLIP built by open_clip
(``devkit.tiny_model``), processes are real ``torchrun``/``kubeclip`` processes talking gloo. The
job document is ``devkit.jobs.local_job``'s.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from devkit import jobs
from devkit.paths import REPO, tools_bin
from devkit.tiny_model import tiny_model

VENV_BIN = Path(sys.executable).parent


#: One epoch of :func:`dataset`'s 96 rows in one process: 6 steps of 16, no checkpoint, no loader
#: workers. The run that the fast-path and the training-option tests each compare their variant with.
ONE_EPOCH = {
    "learningRate": 1e-3,
    "warmupSteps": 2,
    "epochs": 1,
    "batchSize": 16,
    "workers": 0,
    "checkpointEverySteps": 0,
}


def dataset(root: Path, n: int = 96, val_n: int = 32, size: int = 32) -> tuple[Path, Path]:
    from trainer.sample_data import generate

    return generate(root / "data", n=n, val_n=val_n, size=size, seed=0)


def manifest(
    root: Path, name: str, output: Path, *, training: dict, nproc: int = 2, port: int = 0, model: str | None = None
) -> Path:
    train_csv, val_csv = dataset(root)
    doc = jobs.local_job(
        name,
        model=model or tiny_model(root),
        train_csv=train_csv,
        val_csv=val_csv,
        output=output,
        training={"learningRate": 1e-3, "warmupSteps": 2, **training},
        metrics={"port": port},
        numProcPerNode=nproc,
    )
    return jobs.write(doc, root / f"{name}.yaml")


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("KUBECLIP_PREFLIGHT_DONE", None)
    e.setdefault("OMP_NUM_THREADS", "1")  # 2 ranks on a 2-core machine: no oversubscription
    return e


def promtool() -> str:
    """``$KUBECLIP_TOOLS/bin/promtool``, else PATH. Missing: the test FAILS (make tools fetches it)."""
    for cand in (tools_bin() / "promtool", shutil.which("promtool")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise AssertionError(f"promtool not found in {tools_bin()} or on PATH: run `make tools`")
