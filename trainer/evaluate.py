"""Retrieval eval on the validation CSV: image→text and text→image recall@1/5/10, mean rank, loss.

Who uses it: ``trainer.train`` (rank 0, at every epoch end), ``hack/demo.py`` (before training).

Each validation row is one (image, caption) pair; the caption of row i is the only correct match
for image i. Recall@k is the fraction of queries whose match ranks in the top k; the mean rank is
1-based. ``val_loss`` is the training objective (open_clip's CLIP loss, or its SigLIP loss for a
model with a ``logit_bias``) per batch of ``batch_size`` rows, averaged over rows — the quantity
the training loss estimates, so the two can be compared. Features are compared in fp32 whatever
``spec.training.precision`` the model runs in.
"""

from __future__ import annotations

import torch

from trainer.loss import contrastive_loss
from trainer.precision import input_dtype

KS = (1, 5, 10)


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> dict[str, float]:
    was_training = model.training
    model.eval()
    images, texts, loss_sum, n = [], [], 0.0, 0
    scale = model.logit_scale.exp().float()
    bias = model.logit_bias.float() if getattr(model, "logit_bias", None) is not None else None
    dtype = input_dtype(model)  # a pure bf16/fp16 model takes its images in its own dtype
    for image, tokens in loader:
        image = image.to(device, dtype, non_blocking=True)
        tokens = tokens.to(device, non_blocking=True)
        with autocast():
            img = model.encode_image(image, normalize=True).float()
            txt = model.encode_text(tokens, normalize=True).float()
        loss_sum += contrastive_loss(img, txt, scale, bias).item() * len(img)
        n += len(img)
        images.append(img.cpu())
        texts.append(txt.cpu())
    model.train(was_training)
    img = torch.cat(images)
    txt = torch.cat(texts)
    out = {"val_loss": loss_sum / max(1, n), "val_samples": float(n)}
    sims = img @ txt.T
    truth = torch.arange(len(img))
    for direction, s in (("image_to_text", sims), ("text_to_image", sims.T)):
        # rank of the true match = number of candidates scoring strictly higher, + 1
        true_score = s[truth, truth].unsqueeze(1)
        ranks = (s > true_score).sum(dim=1) + 1
        out[f"{direction}_mean_rank"] = ranks.float().mean().item()
        for k in KS:
            out[f"{direction}_R@{k}"] = (ranks <= k).float().mean().item()
    return out
