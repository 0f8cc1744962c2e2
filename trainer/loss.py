"""The symmetric contrastive (CLIP/InfoNCE) loss.

Who uses it: ``trainer.train`` (on the gathered global batch), ``trainer.evaluate`` (val loss).

Row i of the image features and row i of the text features are a pair; every other row of the
batch is a negative. The loss is the mean of the image→text and text→image cross-entropies of
``scale * image @ text.T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
