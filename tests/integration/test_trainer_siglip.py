"""SigLIP: a model with a ``logit_bias`` fine-tunes with open_clip's sigmoid loss across 2 processes;
models the trainer cannot train (CoCa) are refused with one line before any training.

Real runs: ``torchrun --nproc_per_node 2 -m trainer`` (gloo; SigLipLoss exchanges text features
between the ranks) on the tiny SigLIP-style config of ``trainer_helpers``, with retrieval eval at
each epoch end; ``python -m trainer`` on a CoCa-style config.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainer_helpers import VENV_BIN, env, manifest

from devkit.tiny_model import TINY_CONFIG, TINY_SIGLIP_CONFIG, tiny_model

pytestmark = pytest.mark.slow


def test_siglip_model_fine_tunes_with_the_sigmoid_loss_and_evaluates(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    model = tiny_model(tmp_path, TINY_SIGLIP_CONFIG, "tiny-siglip")
    job = manifest(
        tmp_path,
        "siglip",
        out,
        model=model,
        training={"epochs": 3, "batchSize": 8, "workers": 0, "checkpointEverySteps": 0},
    )
    proc = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "trainer", str(job)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((out / "final" / "metrics.json").read_text())
    assert m["world_size"] == 2
    losses = m["epoch_train_loss"]
    # The sigmoid loss of this init is ~10 per image (the positive pair's logit starts near -10;
    # the seeded run's first-epoch mean is ~5.3), the softmax CLIP loss of a 16-row global batch
    # starts at ~ln 16 = 2.8 and only falls: the run trained the SigLIP objective.
    assert losses[0] > 4.0, losses
    assert losses[-1] < losses[0] - 0.5, losses
    assert 0.0 <= m["image_to_text_R@1"] <= m["image_to_text_R@5"] <= 1.0, m
    assert m["val_loss"] > 0.0, m
    weights = load_file(str(out / "final" / "open_clip_model.safetensors"))
    assert abs(weights["logit_bias"].item() - (-10.0)) > 1e-3, "logit_bias did not train"
    config = json.loads((out / "final" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["init_logit_bias"] == -10.0  # reloads as a SigLIP model


def test_coca_model_is_refused_with_one_line(tmp_path):
    coca = {
        "model_cfg": {
            **TINY_CONFIG["model_cfg"],
            "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
        }
    }
    job = manifest(
        tmp_path, "coca", tmp_path / "out", model=tiny_model(tmp_path, coca, "tiny-coca"), training={}, nproc=1
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", str(job)], env=env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("config: spec.model.name local-dir:"), proc.stderr[-2000:]
    assert "CoCa-style model" in last, proc.stderr[-2000:]
    assert not (tmp_path / "out" / "checkpoints").exists()
