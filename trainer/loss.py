"""The training objective: open_clip's own ``ClipLoss`` (softmax, CLIP) or ``SigLipLoss`` (sigmoid).

Who uses it: ``trainer.train`` (:func:`make_loss`, over the processes of the run),
``trainer.evaluate`` (:func:`contrastive_loss`, the validation loss of one batch).

A model with a ``logit_bias`` is a SigLIP model and trains with the sigmoid loss; every other
model with the symmetric InfoNCE loss. What the gradients are across N processes (DDP averages
them) — each rank computes the loss of its batch of B rows with every other rank's features:

* ``ClipLoss``, ``gatherWithGrad: true`` (``localLoss`` true or false): the gathered features
  carry their gradient back to the rank that made them, so after DDP's average every parameter,
  ``logit_scale`` included, has exactly the gradient of the loss of the global batch of N*B rows
  (the same as one process with batch N*B). ``localLoss`` only cuts the logits each rank builds
  from (N*B)^2 to B x N*B.
* ``ClipLoss``, both false (open_clip's default): every rank computes the global-batch loss but
  only its own features carry gradient. ``logit_scale``'s gradient is exact; every other
  parameter's is the global-batch gradient divided by N (each rank's share is exact, DDP then
  averages instead of summing). Adam's update is invariant to that scale except through ``eps``
  and gradient clipping (``gradClipNorm`` then clips a norm N times smaller).
* ``ClipLoss``, ``localLoss: true`` without ``gatherWithGrad``: each rank's features get the
  gradient of its own rows' loss only (not of their role as negatives on other ranks): not the
  global-batch gradient. Allowed because open_clip allows it; the README says to avoid it.
* ``SigLipLoss``: open_clip exchanges text features between neighbouring ranks with their
  gradient, and each rank's loss is a sum over its B images, divided by B; after DDP's average
  every parameter, ``logit_scale`` and ``logit_bias`` included, has exactly the gradient of the
  N*B-row loss.

``tests/integration/test_trainer_gradients.py`` checks each statement with real gloo processes.
"""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss, SigLipLoss


def make_loss(siglip: bool, rank: int, world: int, *, local_loss: bool = False, gather_with_grad: bool = False):
    """The loss of the run: call it as ``loss(image, text, logit_scale, logit_bias)``."""
    if siglip:
        return SigLipLoss(rank=rank, world_size=world)
    return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of one batch in one process (sigmoid when ``bias`` is given, softmax otherwise)."""
    if bias is not None:
        return SigLipLoss()(image, text, scale, bias)
    return ClipLoss()(image, text, scale)
