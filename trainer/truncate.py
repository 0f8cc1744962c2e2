"""Exact text truncation: run the text tower on each batch's longest caption, not on all 77 positions.

Who uses it: ``trainer.train`` (:func:`enable` on the built model, :class:`TokenCut` handed to the
loaders), ``trainer.data`` and ``trainer.gpu_data`` (their collate functions call
:meth:`TokenCut.__call__` on the CPU), ``hack/bench_gpu.py`` (executed FLOPs).

Why: captions of fine-tuning sets are typically 10-30 tokens, padded to the tokenizer's 77; the
text tower then spends most of its FLOPs on padding. When the tower is causal (each position
attends only to itself and earlier ones) and its output is the feature at the end-of-text token
(``pool_type`` ``argmax``: the highest token id, open_clip's EOT; or ``eos``: the first ``eos_id``),
positions after every row's pooled position cannot change any row's features. Cutting the batch
to ``max(pooled position) + 1`` gives the same features — exact, not an approximation.

The length is rounded up to a bucket (16/32/48/64/77, capped at the context length) so that a
compiled step sees at most five text shapes (one graph each) instead of one per batch.

open_clip 3.3.0's towers do not accept a shorter batch as they are: ``CLIP.encode_text`` adds the
whole positional embedding and passes the full 77x77 causal mask; ``TextTransformer`` slices the
positional embedding but not the mask. :func:`enable` therefore gives the model an
``encode_text`` (or its ``TextTransformer`` an ``_embeds``) that slices both to the batch's length;
at full length they compute exactly what open_clip's do. Towers where a cut is not exact
(bidirectional ones such as SigLIP's, ``last``/``first`` pooling, a CLS token, Hugging Face towers)
are left alone and :func:`enable` says why.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Text lengths a batch is cut to (capped at the model's context length, which is always one).
BUCKETS = (16, 32, 48, 64, 77)


@dataclass(frozen=True)
class TokenCut:
    """Cut a ``(B, context)`` token batch to its bucketed exact length; picklable (loader workers)."""

    context_length: int
    pool_type: str  # "argmax" or "eos"
    eos_id: int | None = None
    buckets: tuple[int, ...] = BUCKETS

    def length(self, tokens: torch.Tensor) -> int:
        """Exact length (last pooled position + 1), rounded up to a bucket."""
        if self.pool_type == "argmax":
            pooled = tokens.argmax(dim=-1)
        elif self.eos_id is not None:
            pooled = tokens.eq(self.eos_id).int().argmax(dim=-1)
        else:
            raise ValueError("TokenCut with pool_type 'eos' needs eos_id")
        need = int(pooled.max()) + 1 if tokens.numel() else 1
        return next((b for b in self.sizes() if b >= need), self.context_length)

    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted({min(b, self.context_length) for b in self.buckets} | {self.context_length}))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        n = self.length(tokens)
        return tokens if n >= tokens.shape[-1] else tokens[:, :n].contiguous()


def _text_tower(model: torch.nn.Module):
    """``(kind, tower)``: ``("clip", model)`` for open_clip's CLIP, ``("text", model.text)`` for a
    ``TextTransformer`` inside ``CustomTextCLIP``, or ``(None, reason)``."""
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        return "text", text
    if text is None and hasattr(model, "token_embedding") and hasattr(model, "attn_mask"):
        return "clip", model
    return None, f"text tower {type(text).__name__} (not open_clip's own transformer)"


def plan(model: torch.nn.Module) -> tuple[TokenCut | None, str]:
    """The cut this model's text tower allows exactly, or ``(None, why not)``."""
    kind, tower = _text_tower(model)
    if kind is None:
        return None, str(tower)
    pool = tower.text_pool_type if kind == "clip" else tower.pool_type
    eos = tower.text_eos_id if kind == "clip" else tower.eos_id
    ctx = tower.context_length
    if tower.attn_mask is None:
        return None, "the text tower is bidirectional (no causal mask)"
    if pool not in ("argmax", "eos"):
        return None, f"the text tower pools with {pool!r} (only argmax/eos pooling is exact under a cut)"
    if getattr(tower, "cls_emb", None) is not None or tower.positional_embedding.shape[0] != ctx:
        return None, "the text tower appends a CLS token"
    if kind == "text" and tower.use_pad_mask:
        return None, "the text tower uses a padding mask"
    return TokenCut(ctx, pool, eos if pool == "eos" else None), f"causal text tower with {pool} pooling"


def _clip_encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` for a batch of any length <= context (mask and positions sliced)."""
    from open_clip.transformer import text_global_pool

    n = text.shape[1]
    cast_dtype = self.transformer.get_cast_dtype()
    x = self.token_embedding(text).to(cast_dtype) + self.positional_embedding[:n].to(cast_dtype)
    x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
    x = text_global_pool(x, text, self.text_pool_type, eos_token_id=self.text_eos_id)
    if self.text_projection is not None:
        x = self.text_projection(x) if isinstance(self.text_projection, torch.nn.Linear) else x @ self.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def _sliced_embeds(self, text: torch.Tensor):
    """``TextTransformer._embeds`` with the causal mask cut to the batch's length (positions already are)."""
    x, mask = type(self)._embeds(self, text)
    n = x.shape[1]
    if mask is not None and mask.dim() == 2 and mask.shape[0] != n:
        mask = mask[:n, :n]
    return x, mask


def enable(model: torch.nn.Module) -> tuple[TokenCut | None, str]:
    """Let ``model`` take cut token batches; return the cut to apply in collate (None: not exact here)."""
    cut, why = plan(model)
    if cut is None:
        return None, why
    kind, tower = _text_tower(model)
    if kind == "clip":
        # torch types a module's dynamic attributes as Tensor | Module; this one is open_clip's method
        model.encode_text = types.MethodType(_clip_encode_text, model)  # type: ignore[assignment]
    else:
        tower._embeds = types.MethodType(_sliced_embeds, tower)
    return cut, why
