"""Tiny OpenCLIP model configs and the ``local-dir:`` folder that holds one: models that train in seconds on CPU.

Who uses it: the trainer integration tests (``tests/integration/trainer_helpers.py``,
``test_trainer_options.py``, ``test_trainer_siglip.py``, ``test_trainer_fastpath.py``,
``test_forgetting.py``), ``hack/forgetting_demo.py`` and ``hack/gpu_precisions.py``. open_clip
builds a real (random) CLIP from the folder's ``open_clip_config.json``; nothing is downloaded.
(``hack/peer/tiny_model`` is the benches' larger one, a file because open_clip_train reads it too;
``examples/models/tiny-vit-64`` is the e2e tests' and the examples'.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: A 32-px, one-layer OpenCLIP config: a few million parameters (mostly the token embedding).
TINY_CONFIG: dict[str, Any] = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 1, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"size": 32, "interpolation": "bilinear", "resize_mode": "shortest"},
}

#: The same with SigLIP's learned logit bias (and its initial temperature 10, bias -10): open_clip
#: builds it with a ``logit_bias``, so the trainer trains it with the sigmoid loss.
TINY_SIGLIP_CONFIG: dict[str, Any] = {
    "model_cfg": {**TINY_CONFIG["model_cfg"], "init_logit_scale": 2.302585092994046, "init_logit_bias": -10.0},
    "preprocess_cfg": TINY_CONFIG["preprocess_cfg"],
}


def tiny_model(root: Path, config: dict[str, Any] = TINY_CONFIG, name: str = "tiny-model") -> str:
    """Write ``config`` to ``root/name/open_clip_config.json``; returns the model name ``local-dir:root/name``."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{d}"
