"""``trainer.model.import_open_clip``: open_clip without torch._dynamo/timm/hub, nothing broken after.

Runs in fresh interpreters (the point is what gets imported), with the repository's tiny config.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "models" / "tiny-vit-64"

PROBE = f"""
import sys
from trainer.model import import_open_clip
oc = import_open_clip("local-dir:{TINY}")
lean = not any(m in sys.modules for m in ("torch._dynamo", "timm", "huggingface_hub", "transformers",
                                          "torchvision.models", "torchvision.datasets"))
model, _, _ = oc.create_model_and_transforms("local-dir:{TINY}")
import torch, torch._dynamo            # the real dynamo still imports afterwards
from torchvision.ops import roi_align  # and torchvision's user of the stub works through it
out = roi_align(torch.rand(1, 1, 4, 4), [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], output_size=1)
import torchvision.models, torchvision.datasets  # the real model zoo and datasets still import afterwards
real = callable(torchvision.models.resnet18) and hasattr(torchvision.datasets, "ImageFolder")
print("lean" if lean else "heavy", type(model).__name__, tuple(out.shape), callable(torch._dynamo.disable), real)
"""


def test_open_clip_imports_without_dynamo_and_timm_and_dynamo_still_works():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["lean", "CLIP", "(1,", "1,", "1,", "1)", "True", "True"]


def test_builtin_model_names_import_plainly():
    probe = "from trainer.model import import_open_clip; oc = import_open_clip('ViT-B-32'); print(oc.__name__, 'ViT-B-32' in oc.list_models())"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["open_clip", "True"]
