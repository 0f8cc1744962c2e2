"""Build the OpenCLIP model, its transforms and tokenizer; check it is trainable; split parameters for AdamW.

Who uses it: ``trainer.train`` (the loop, through :func:`build`), ``python -m trainer`` (imports
open_clip while the dataset preflight runs), ``hack/demo.py``.

open_clip is imported plainly. Before any weights are built, :func:`check_trainable` rejects
models this trainer cannot train correctly (CoCa and anything else with a text decoder: their
objective includes a captioning loss this trainer does not compute). After the model is built,
:func:`lock_towers` freezes what ``spec.training`` asks with open_clip's own
``lock_image_tower``/``lock_text_tower``, after checking the requested number of unlocked groups
against the model (open_clip itself silently clamps it). Both raise :class:`ModelError`, whose
``str()`` is one line; ``python -m trainer`` exits with ``EXIT_CONFIG`` on it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch

from kubeclip.api import TrainerSpec, TrainingSpec

log = logging.getLogger("trainer")


class ModelError(ValueError):
    """The model and the spec do not fit together; ``str()`` is one line naming the field."""


def model_config(name: str) -> dict[str, Any]:
    """``{"model_cfg": ..., ["preprocess_cfg": ...]}`` of a ``local-dir:`` or built-in model name."""
    if name.startswith("local-dir:"):
        return json.loads((Path(name[len("local-dir:") :]) / "open_clip_config.json").read_text())
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ModelError(f"spec.model.name {name}: not an open_clip model name (see open_clip.list_models())")
    return {"model_cfg": cfg}


def check_trainable(name: str, config: dict[str, Any]) -> None:
    """Reject models whose training objective is not the contrastive (CLIP) or sigmoid (SigLIP) loss."""
    cfg = config.get("model_cfg", config)
    if "multimodal_cfg" in cfg:
        raise ModelError(
            f"spec.model.name {name}: a CoCa-style model (it has a text decoder, trained with a captioning "
            "loss); this trainer trains only contrastive CLIP and SigLIP models"
        )


def is_siglip(model: torch.nn.Module) -> bool:
    """A model with a learned ``logit_bias`` (``init_logit_bias`` in its config) is a SigLIP model."""
    return getattr(model, "logit_bias", None) is not None


def _image_groups(visual: torch.nn.Module) -> int | None:
    """How many layer groups ``lock(unlocked_groups=...)`` of this image tower can unlock; None: unknown."""
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        # embeddings, each block but the last, last block + ln_post, proj (open_clip's grouping)
        return len(visual.transformer.resblocks) + 2
    if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
        return 0  # open_clip locks it whole only
    if isinstance(visual, open_clip.timm_model.TimmModel):
        from timm.models import group_parameters

        return max(group_parameters(visual.trunk, visual.trunk.group_matcher()).keys()) + 1
    return None


def _text_groups(model: torch.nn.Module) -> int | None:
    """How many groups open_clip's ``lock_text_tower`` can unlock; None: a tower it groups itself (HF)."""
    text = getattr(model, "text", model)
    transformer = getattr(text, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks"):
        return None
    # embeddings, each block but the last, last block + ln_final, projection (when there is one)
    return len(transformer.resblocks) + 1 + (getattr(text, "text_projection", None) is not None)


def lock_towers(model: open_clip.CLIP | open_clip.CustomTextCLIP, t: TrainingSpec) -> None:
    """Freeze the towers as ``t`` asks, after checking the unlocked counts against this model."""
    if t.lockImage:
        groups = _image_groups(model.visual)
        n = t.lockImageUnlockedGroups
        if n and groups is not None and n > groups:
            kind = type(model.visual).__name__
            raise ModelError(
                f"spec.training.lockImageUnlockedGroups {n}: the image tower ({kind}) has "
                + (f"only {groups} layer groups" if groups else "no partial unlocking in open_clip, lock it whole (0)")
            )
        model.lock_image_tower(unlocked_groups=n, freeze_bn_stats=t.lockImageFreezeBnStats)
    if t.lockText:
        groups = _text_groups(model)
        n = t.lockTextUnlockedLayers
        if n and groups is not None and n > groups:
            raise ModelError(f"spec.training.lockTextUnlockedLayers {n}: the text tower has only {groups} layer groups")
        if not t.lockTextFreezeLayerNorm and groups is not None:
            raise ModelError(
                "spec.training.lockTextFreezeLayerNorm false: open_clip's own text transformer always freezes "
                "its LayerNorms (only Hugging Face text towers can leave them trainable)"
            )
        model.lock_text_tower(unlocked_layers=n, freeze_layer_norm=t.lockTextFreezeLayerNorm)


def build(spec: TrainerSpec, device):
    """Return ``(model, train_transform, val_transform, tokenizer, open_clip_config)``.

    ``open_clip_config`` is the dict written to ``final/open_clip_config.json`` on export.
    """
    name = spec.model.name
    config = model_config(name)
    check_trainable(name, config)
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
    pp = getattr(model.visual, "preprocess_cfg", None)
    if pp and "preprocess_cfg" not in config:
        config["preprocess_cfg"] = dict(pp)
    lock_towers(model, spec.training)
    if spec.training.gradCheckpointing:
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
    """Trainable parameters in two AdamW groups: decayed matrices, and everything :func:`no_decay` names."""
    decay: list[torch.nn.Parameter] = []
    other: list[torch.nn.Parameter] = []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (other if no_decay(n, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
