"""Write the fine-tuned model as ``<output.path>/final/``, loadable by open_clip as ``local-dir:``.

Who uses it: ``trainer.train`` (rank 0, after the last epoch), ``trainer.forgetting`` (a WiSE-FT
mix as ``final/``, and with ``spec.export.allAlphas`` every mix as ``wiseft/alpha-<a>/``).

Layout (open_clip 3.3.0's ``local-dir:`` convention, ``open_clip.factory._find_checkpoint_in_dir``
prefers ``open_clip_model.safetensors``)::

    final/open_clip_config.json       {"model_cfg": ..., "preprocess_cfg": ...}
    final/open_clip_model.safetensors the weights (fp32, no "module." prefix)
    final/metrics.json                final eval + throughput

Loading: ``open_clip.create_model_and_transforms("local-dir:<output>/final")``. The directory is
built next to ``final/`` and renamed into place, so a reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

WEIGHTS = "open_clip_model.safetensors"


def export(
    model: torch.nn.Module | None,
    config: dict,
    metrics: dict,
    output: str,
    *,
    state: dict | None = None,
    name: str = "final",
) -> Path:
    """Write ``state`` (default: the model's weights) as ``<output>/<name>/``."""
    from safetensors.torch import save_file

    final = Path(output) / name
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if state is None:
        if model is None:
            raise ValueError("export needs a model or a state dict")
        state = model.state_dict()
    weights = state
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in weights.items()
    }
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final
