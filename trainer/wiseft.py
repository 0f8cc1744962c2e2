"""WiSE-FT (Wortsman et al., CVPR 2022): mix the start and the fine-tuned weights, pick a mix.

Who uses it: ``trainer.forgetting`` (rank 0, at the end of a run), the tests.

:func:`interpolate` is the whole method: ``(1 - alpha) * start + alpha * finetuned`` for every
floating-point tensor of the state dict, computed in fp32 on the CPU in exactly that order (so a
test can recompute it bit for bit); integer buffers are taken from the fine-tuned weights.
Alpha 0 gives the start weights and alpha 1 the fine-tuned ones, exactly. A model trained in pure
``bf16``/``fp16`` evaluates each mix rounded to its dtype, and that rounded mix is what is exported.

:func:`select` applies ``spec.export.select`` to the evaluated table; :func:`table_lines` formats
the table for the log and the job's status message.
"""

from __future__ import annotations

import torch

from kubeclip.api import ExportSpec

R1 = "image_to_text_R@1"


def cpu_state(model_or_state) -> dict[str, torch.Tensor]:
    """A detached fp32 CPU copy of a state dict (what the sweep keeps: one copy per weight set)."""
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else model_or_state
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype, copy=True)
        for k, v in state.items()
    }


def interpolate(
    start: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    alpha: float,
    dtypes: dict[str, torch.dtype] | None = None,
) -> dict[str, torch.Tensor]:
    """The mix at ``alpha``; with ``dtypes`` (the model's, under ``precision: bf16``/``fp16``) each
    mixed tensor is rounded to its model dtype (and held in fp32 again): the weights the model
    evaluates after loading the mix are then exactly the ones exported."""
    if start.keys() != finetuned.keys():
        raise ValueError("start and fine-tuned weights have different parameters")
    out = {}
    for k, f in finetuned.items():
        s = start[k]
        if f.is_floating_point():
            mixed = (1.0 - alpha) * s.float() + alpha * f.float()
            dtype = (dtypes or {}).get(k, torch.float32)
            out[k] = mixed.to(dtype).float() if dtype != torch.float32 and dtype.is_floating_point else mixed
        else:
            out[k] = f.clone()
    return out


def model_dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """Each state-dict entry's dtype in ``model`` (for :func:`interpolate`)."""
    return {k: v.dtype for k, v in model.state_dict().items()}


def _r1(entry: dict, part: str) -> float | None:
    v = (entry.get(part) or {}).get(R1)
    return float(v) if v is not None else None


def select(table: list[dict], policy: ExportSpec) -> tuple[float, str]:
    """Return ``(alpha to export, one-line reason)``; ``table`` entries are ``{"alpha", "val", "retention", ...}``."""
    if policy.select == "finetuned":
        return 1.0, "select finetuned: the fine-tuned weights (alpha 1)"
    if policy.select == "alpha":
        if policy.alpha is None:  # ExportSpec refuses this; the same line if a spec bypassed it
            raise ValueError("select: alpha needs spec.export.alpha")
        return float(policy.alpha), f"select alpha: the fixed alpha {policy.alpha:g}"
    limit = policy.maxRetentionDrop
    if limit is None:
        raise ValueError("select: bestWithinRetentionDrop needs spec.export.maxRetentionDrop")
    start = next(e for e in table if e["alpha"] == 0.0)
    base = _r1(start, "retention")

    def within(entry: dict) -> bool:
        kept = _r1(entry, "retention")
        return base is not None and kept is not None and base - kept <= limit + 1e-12

    ok = [e for e in table if within(e)]
    best = max(ok, key=lambda e: (_r1(e, "val") or 0.0, e["alpha"]))  # alpha 0 always qualifies
    return float(best["alpha"]), (
        f"select bestWithinRetentionDrop {limit:g}: alpha {best['alpha']:g} has the best val R@1 "
        f"({_r1(best, 'val'):.3f}) among the alphas whose retention R@1 stays within {limit:g} of the start's ({base:.3f})"
    )


def table_lines(table: list[dict]) -> list[str]:
    """One line per alpha: val i2t/t2i R@1, retention i2t R@1, zero-shot top-1 (where measured)."""
    lines = []
    for e in table:
        parts = [
            f"alpha {e['alpha']:.2f}",
            f"val i2t R@1 {_r1(e, 'val'):.3f} t2i R@1 {e['val']['text_to_image_R@1']:.3f}",
        ]
        if e.get("retention"):
            parts.append(f"retention R@1 {_r1(e, 'retention'):.3f}")
        if e.get("zeroshot"):
            parts.append(f"zero-shot top1 {e['zeroshot']['top1']:.3f}")
        lines.append("  ".join(parts))
    return lines
