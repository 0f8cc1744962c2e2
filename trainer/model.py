"""Build the OpenCLIP model, its transforms and tokenizer; split parameters for AdamW.

Who uses it: ``trainer.train`` (the loop), ``trainer.evaluate`` callers such as ``hack/demo.py``.

Why the import dance in :func:`import_open_clip`: ``import open_clip`` imports torchvision, whose
``torchvision.ops.roi_align`` imports ``torch._dynamo`` (seconds of imports, the compiler stack),
and ``open_clip.timm_model`` imports timm. A fine-tune of a plain ViT/text-transformer CLIP needs
neither: the trainer runs no ``torch.compile`` and uses its own AdamW and gradient all-reduce
(``trainer.optim``, ``trainer.distributed``) precisely because ``torch.optim`` and
``DistributedDataParallel`` import dynamo on first use. So while open_clip is imported, the one
name torchvision takes from dynamo (``is_compile_supported``, only called inside ``roi_align``,
which CLIP never calls) is served by a forwarding stub, and timm and huggingface_hub (only used to
download weights) are reported missing. When the model is not a ``local-dir:`` one without timm
towers (a built-in name may need the hub and timm), the import is a plain one. torchvision's
model zoo and dataset packages, which its ``__init__`` imports and CLIP never uses, are served
empty during that import too. Both stubs are removed from ``sys.modules`` right after, so any
later real ``import torch._dynamo`` / ``import timm`` works normally. If anything in that import
fails, it is retried plainly.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

from trainer.config import TrainerSpec

log = logging.getLogger("trainer")


def _forward_is_compile_supported(device_type: Any) -> bool:
    from torch._dynamo.utils import is_compile_supported  # the real one, imported on first call

    return is_compile_supported(device_type)


class _LeanFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torch._dynamo``/``torch._dynamo.utils`` as stubs and hides ``timm`` (see module doc)."""

    STUBS = ("torch._dynamo", "torch._dynamo.utils")

    #: torchvision's ``__init__`` imports its model zoo and dataset classes (about half a second
    #: of imports); open_clip uses only ``torchvision.transforms`` and ``torchvision.ops.misc``.
    #: While open_clip is imported these two are served as empty packages.
    EMPTY = ("torchvision.models", "torchvision.datasets")

    #: Not needed for a local-dir: model without timm towers: timm (vision towers) and the Hugging
    #: Face hub client (downloads); open_clip imports both inside try/except ImportError.
    HIDDEN = ("timm", "huggingface_hub")

    def __init__(self, hide_timm: bool) -> None:
        self.hide_timm = hide_timm

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401
        if fullname in self.STUBS or fullname in self.EMPTY:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname != "torch._dynamo.utils")
        if self.hide_timm and fullname.split(".")[0] in self.HIDDEN:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden while importing open_clip)", name=fullname)
        return None

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        if module.__name__ == "torch._dynamo.utils":
            module.is_compile_supported = _forward_is_compile_supported
        else:  # torch._dynamo (a package, so 'torch._dynamo.utils' can be imported below it), EMPTY
            module.__path__ = []


def _needs_timm(model_name: str) -> bool:
    if model_name.startswith("local-dir:"):
        try:
            cfg = json.loads((Path(model_name[len("local-dir:"):]) / "open_clip_config.json").read_text())
        except (OSError, ValueError):
            return True
        cfg = cfg.get("model_cfg", cfg)
        return "timm_model_name" in cfg.get("vision_cfg", {})
    return True  # a built-in name: we do not know its config before open_clip is imported


def import_open_clip(model_name: str = ""):
    """``import open_clip`` without pulling in torch._dynamo (and timm when the model needs none)."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    import torch  # noqa: F401 - the real torch first, so only the two stub names are intercepted

    if "torch._dynamo" in sys.modules or _needs_timm(model_name):
        # dynamo is there already, or timm is needed (timm imports dynamo itself): nothing to save
        import open_clip

        return open_clip
    finder = _LeanFinder(hide_timm=True)
    sys.meta_path.insert(0, finder)
    try:
        import open_clip

        return open_clip
    except Exception:  # pragma: no cover - a future torchvision/open_clip changed its imports
        _forget_lean_import(finder)
        finder = None
        for name in [m for m in sys.modules if m.startswith(("open_clip", "torchvision", "timm"))]:
            del sys.modules[name]
        import open_clip

        return open_clip
    finally:
        if finder is not None:
            _forget_lean_import(finder)


def _forget_lean_import(finder: _LeanFinder) -> None:
    """Remove the finder and the stubs, so later imports of torch._dynamo/timm/torchvision.models are real."""
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
    for name in _LeanFinder.STUBS:
        sys.modules.pop(name, None)
    torch_mod = sys.modules["torch"]
    if isinstance(torch_mod.__dict__.get("_dynamo"), types.ModuleType):
        del torch_mod._dynamo  # torch imports the real one lazily on attribute access
    # The empty torchvision packages: a later `import torchvision.models` loads the real one.
    torchvision = sys.modules.get("torchvision")
    for name in _LeanFinder.EMPTY:
        stub = sys.modules.get(name)
        if stub is not None and getattr(stub.__spec__, "loader", None) is finder:
            del sys.modules[name]
            if torchvision is not None and torchvision.__dict__.get(name.rsplit(".", 1)[1]) is stub:
                delattr(torchvision, name.rsplit(".", 1)[1])


def build(spec: TrainerSpec, device):
    """Return ``(model, train_transform, val_transform, tokenizer, open_clip_config)``.

    ``open_clip_config`` is the dict written to ``final/open_clip_config.json`` on export.
    """
    open_clip = import_open_clip(spec.model.name)
    name = spec.model.name
    pretrained = spec.model.pretrained or None
    local_dir = name.startswith("local-dir:")
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name,
        pretrained=None if local_dir else pretrained,
        device=device,
        # Fine-tuning: a light crop jitter instead of open_clip's pre-training default (0.9..1.0
        # is also what open_clip_train uses unless told otherwise).
        aug_cfg={"scale": (0.9, 1.0)},
    )
    if local_dir and pretrained:  # open_clip ignores `pretrained` for local-dir: models; we honour it
        open_clip.load_checkpoint(model, pretrained)
    tokenizer = open_clip.get_tokenizer(name)
    if local_dir:
        config = json.loads((Path(name[len("local-dir:"):]) / "open_clip_config.json").read_text())
    else:
        config = {"model_cfg": open_clip.get_model_config(name)}
    pp = getattr(model.visual, "preprocess_cfg", None)
    if pp and "preprocess_cfg" not in config:
        config["preprocess_cfg"] = dict(pp)
    t = spec.training
    if t.lockImage:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    if t.lockText:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    if t.gradCheckpointing:
        model.set_grad_checkpointing(True)
    return model, preprocess_train, preprocess_val, tokenizer, config


def no_decay(name: str, param) -> bool:
    """Norm weights, biases, logit scale/bias and embeddings are not weight-decayed."""
    return (
        param.ndim < 2
        or "bn" in name
        or "ln" in name
        or "norm" in name
        or "bias" in name
        or "logit_scale" in name
        or "embedding" in name
        or name.endswith(("class_embedding", "positional_embedding", "token_embedding.weight"))
    )


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, other = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (other if no_decay(n, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
