#!/usr/bin/env python3
"""``make demo``: fine-tune a tiny OpenCLIP model on a generated dataset with 2 local processes.

1. generates the example dataset (``runs/demo/data``, see ``trainer.sample_data.DEMO``);
2. evaluates the untrained model (same seed, so the same initial weights the run starts from);
3. runs ``examples/local-cpu.yaml`` through ``kubeclip run``'s code path
   (``trainer.launch.run_local``: preflight, the elastic launcher, 2 gloo processes);
4. prints the retrieval eval before and after.

A second ``make demo`` starts a fresh run (the old ``runs/demo/out`` is moved aside), because a
run restarted on the same output directory resumes instead of training again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from devkit.paths import REPO
from kubeclip.api import load_manifest
from trainer.sample_data import DEMO, generate

os.chdir(REPO)  # the example manifest's paths are relative to the repository

MANIFEST = REPO / "examples" / "local-cpu.yaml"
KEYS = ("val_loss", "image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5")


def eval_untrained(spec) -> dict:
    """The run's starting point: same seed → same initial weights as rank 0 builds."""
    import torch

    from trainer.data import CaptionDataset, eval_loader
    from trainer.evaluate import evaluate
    from trainer.model import build
    from trainer.table import read_table

    torch.manual_seed(spec.training.seed)
    model, _, tf_val, tok, _ = build(spec, torch.device("cpu"))
    val = CaptionDataset(read_table(spec.dataset.valCsv, spec, "spec.dataset.valCsv"), tf_val, tok, 0, augment=False)
    import contextlib

    return evaluate(model, eval_loader(val, spec.training.batchSize, 0), torch.device("cpu"), contextlib.nullcontext)


def main() -> int:
    t0 = time.time()
    generate(REPO / "runs" / "demo" / "data", **DEMO)
    print(f"dataset: runs/demo/data ({DEMO['n']} train / {DEMO['val_n']} val images, {DEMO['size']} px)")
    _, spec = load_manifest(MANIFEST)
    out = Path(spec.output.path)
    if out.exists():
        shutil.rmtree(out.with_name(out.name + ".previous"), ignore_errors=True)
        out.rename(out.with_name(out.name + ".previous"))
    import logging

    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights" notes: expected here
    before = eval_untrained(spec)
    logging.disable(logging.NOTSET)

    from trainer.launch import run_local

    rc = run_local(MANIFEST)
    if rc:
        return rc
    after = json.loads((out / "final" / "metrics.json").read_text())
    print(f"\n{'':18}{'before':>10}{'after':>10}")
    for k in KEYS:
        print(f"{k:18}{before[k]:>10.3f}{after[k]:>10.3f}")
    print(
        f"(random guess R@1 = {1 / before['val_samples']:.3f}; {after['samples_per_second']} samples/s; "
        f"demo took {time.time() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
