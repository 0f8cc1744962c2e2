"""Zero-shot classification accuracy on the user's classes (``spec.evaluation.zeroShot``).

Who uses it: ``trainer.forgetting`` (rank 0: before training, at each eval, for each WiSE-FT
alpha). The classifier is open_clip's own (``open_clip.build_zero_shot_classifier``: one text
embedding per class, the normalised mean over the caption templates); each image is assigned
the class whose embedding is most similar. Returns ``{"top1", "top5", "samples", "classes"}``;
with fewer than 5 classes ``top5`` is 1.0 by definition.
"""

from __future__ import annotations

import open_clip
import torch

from trainer.data import CaptionDataset, eval_loader
from trainer.precision import input_dtype
from trainer.table import Rows


@torch.no_grad()
def accuracy(
    model, table: Rows, transform, tokenizer, templates: list[str], batch_size: int, device, autocast
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    labels = [str(c).strip() for c in table.captions]
    classes = sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    truth = torch.tensor([index[c] for c in labels])
    with autocast():
        weights = open_clip.build_zero_shot_classifier(
            model, tokenizer, classes, list(templates), num_classes_per_batch=64, device=device, use_tqdm=False
        ).float()  # [embed_dim, classes]
    ds = CaptionDataset(table, transform, tokenizer, seed=0, augment=False)
    hits1 = hits5 = 0
    seen = 0
    k = min(5, len(classes))
    dtype = input_dtype(model)  # a pure bf16/fp16 model takes its images in its own dtype
    for images, _ in eval_loader(ds, batch_size, 0):
        with autocast():
            feats = model.encode_image(images.to(device, dtype), normalize=True).float()
        top = (feats @ weights).topk(k, dim=1).indices.cpu()
        t = truth[seen : seen + len(images)].unsqueeze(1)
        hits1 += (top[:, :1] == t).any(dim=1).sum().item()
        hits5 += (top == t).any(dim=1).sum().item()
        seen += len(images)
    model.train(was_training)
    return {"top1": hits1 / seen, "top5": hits5 / seen, "samples": float(seen), "classes": float(len(classes))}
