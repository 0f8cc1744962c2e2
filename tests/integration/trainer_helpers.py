"""Helpers for the trainer's integration tests: a tiny model config, a dataset, a manifest, promtool.

Who uses it: ``tests/integration/test_trainer_*.py``. Everything is real: the generated dataset
is PNG files on disk, the model is a real (tiny) OpenCLIP CLIP built by open_clip, processes are
real ``torchrun``/``kubeclip`` processes talking gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

#: A 32-px, one-layer OpenCLIP config: a few million parameters (mostly the token embedding).
TINY_CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 1, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"size": 32, "interpolation": "bilinear", "resize_mode": "shortest"},
}


#: The same with SigLIP's learned logit bias (and its initial temperature 10, bias -10): open_clip
#: builds it with a ``logit_bias``, so the trainer trains it with the sigmoid loss.
TINY_SIGLIP_CONFIG = {
    "model_cfg": {**TINY_CONFIG["model_cfg"], "init_logit_scale": 2.302585092994046, "init_logit_bias": -10.0},
    "preprocess_cfg": TINY_CONFIG["preprocess_cfg"],
}


def tiny_model(root: Path, config: dict = TINY_CONFIG, name: str = "tiny-model") -> str:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{d}"


def dataset(root: Path, n: int = 96, val_n: int = 32, size: int = 32) -> tuple[Path, Path]:
    from trainer.sample_data import generate

    return generate(root / "data", n=n, val_n=val_n, size=size, seed=0)


def manifest(
    root: Path, name: str, output: Path, *, training: dict, nproc: int = 2, port: int = 0, model: str | None = None
) -> Path:
    train_csv, val_csv = dataset(root)
    doc = {
        "apiVersion": "kubeclip.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model or tiny_model(root)},
            "dataset": {"trainCsv": str(train_csv), "valCsv": str(val_csv)},
            "training": {"precision": "fp32", "seed": 0, "learningRate": 1e-3, "warmupSteps": 2, **training},
            "output": {"path": str(output)},
            "metrics": {"port": port},
            "numProcPerNode": nproc,
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("KUBECLIP_PREFLIGHT_DONE", None)
    e.setdefault("OMP_NUM_THREADS", "1")  # 2 ranks on a 2-core machine: no oversubscription
    return e


def promtool() -> str:
    """``$KUBECLIP_TOOLS/bin/promtool``, else PATH. Missing: the test FAILS (make tools fetches it)."""
    tools = Path(os.environ.get("KUBECLIP_TOOLS", REPO / ".tools"))
    for cand in (tools / "bin" / "promtool", shutil.which("promtool")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise AssertionError(f"promtool not found in {tools}/bin or on PATH: run `make tools`")
