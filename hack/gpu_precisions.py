"""Every ``spec.training.precision`` on a CUDA GPU, end to end: one line per precision.

Who uses it: a person (or the lead) on a machine with a GPU, for what the CPU tests cannot run
(``fp16``, ``amp``, ``amp_fp16``; ``bf16`` and ``amp_bf16`` are in tests/integration/
test_trainer_precision.py on CPU too)::

    python -m hack.gpu_precisions [--out runs/gpu-precisions] [--precision fp16 --precision amp ...]

For each precision it runs ``python -m trainer`` (one process, the GPU) on a generated dataset
(96 train / 32 val PNGs, ``trainer.sample_data``) with a tiny random OpenCLIP model for 2 epochs
of 6 steps: training, the epoch-end val and retention evals, zero-shot, a WiSE-FT sweep exporting
alpha 0.5; then loads ``final/`` with open_clip and encodes an image on the GPU. It prints
``<precision>: ok  loss A -> B  val i2t R@1 X  zero-shot top1 Y  export loads  (S s)`` or
``<precision>: FAILED (exit N): <the run's last error line>``, and exits 1 if any failed.
Without a CUDA GPU it does nothing and exits 2 with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from devkit import jobs
from devkit.tiny_model import tiny_model

PRECISIONS = ("fp32", "amp", "amp_fp16", "amp_bf16", "bf16", "fp16")


def manifest(root: Path, precision: str, train: Path, val: Path, zeroshot: Path) -> Path:
    doc = jobs.local_job(
        f"gpu-{precision.replace('_', '-')}",
        model=tiny_model(root),
        train_csv=train,
        val_csv=val,
        output=root / precision,
        training={
            "precision": precision,
            "epochs": 2,
            "batchSize": 16,
            "learningRate": 1e-3,
            "warmupSteps": 2,
            "workers": 2,
            "checkpointEverySteps": 0,
        },
        evaluation={"retentionCsv": str(val), "zeroShot": {"csv": str(zeroshot)}},
        export={"wiseFtAlphas": [0.5], "select": "alpha", "alpha": 0.5},
        metrics={"port": 0, "finalScrapeWaitSeconds": 0},
    )
    return jobs.write(doc, root / f"{precision}.yaml")


def zeroshot_csv(val: Path) -> Path:
    """The val images labelled by their caption: one class per distinct caption."""
    out = val.with_name("zeroshot.csv")
    text = val.read_text()
    header, _, rest = text.partition("\n")
    out.write_text(header.replace("caption", "label") + "\n" + rest)
    return out


def check(root: Path, precision: str, train: Path, val: Path, zeroshot: Path) -> tuple[bool, str]:
    job = manifest(root, precision, train, val, zeroshot)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "trainer", str(job)], capture_output=True, text=True, timeout=900)
    took = time.time() - t0
    (root / f"{precision}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        last = [x for x in proc.stderr.strip().splitlines() if x.strip()][-1:] or ["(no output)"]
        return False, f"FAILED (exit {proc.returncode}): {last[0].strip()[:300]}"
    final = root / precision / "final"
    m = json.loads((final / "metrics.json").read_text())
    losses = m["epoch_train_loss"]
    import open_clip
    import torch

    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{final}", device="cuda")
    with torch.no_grad():
        feats = model.encode_image(torch.rand(2, 3, 32, 32, device="cuda"), normalize=True)
    if not torch.isfinite(feats).all():
        return False, "FAILED: the exported model gives non-finite features"
    return True, (
        f"ok  loss {losses[0]:.3f} -> {losses[-1]:.3f}  val i2t R@1 {m['image_to_text_R@1']:.3f}  "
        f"zero-shot top1 {m['zeroshot']['top1']:.3f}  export loads  ({took:.0f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu-precisions", help="work directory (datasets, runs, logs)")
    ap.add_argument("--precision", action="append", choices=PRECISIONS, help="only these (repeatable)")
    a = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_precisions: no CUDA GPU visible; nothing run (the CPU precisions are in make test)")
        return 2
    from trainer.sample_data import generate

    root = Path(a.out)
    train, val = generate(root / "data", n=96, val_n=32, size=32, seed=0)
    zeroshot = zeroshot_csv(val)
    print(f"gpu_precisions on {torch.cuda.get_device_name(0)}, torch {torch.__version__}; logs under {root}")
    ok = True
    for precision in a.precision or PRECISIONS:
        passed, line = check(root, precision, train, val, zeroshot)
        ok &= passed
        print(f"{precision}: {line}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
