"""Forgetting demo: pre-train a tiny CLIP on one domain, fine-tune on another, sweep WiSE-FT.

Who uses it: a person (``python -m hack.forgetting_demo --out runs/forgetting``) for the README's
"Keep what CLIP knew" table; ``tests/integration/test_forgetting.py`` builds the same setup
through :func:`setup`. Everything is generated here: domain A is ``trainer.sample_data``'s shapes
("a red circle at the top left"), domain B its bars ("stripes: 3 vertical cyan bars on black").
Step 1 trains a random tiny model on A (the "pretrained CLIP"); step 2 fine-tunes that model on B
with A's val split as the retention set, A's val images labelled by colour and shape as the
zero-shot set, and a WiSE-FT sweep. Both steps are plain ``python -m trainer JOB.yaml`` runs.

Step 1 is the same training every time for the same inputs, and the slow one (20 epochs): with
``setup(..., cache=DIR)`` (the test passes ``$KUBECLIP_CACHE/fixtures``, by default
``~/.cache/kubeclip/fixtures``) its ``final/`` is kept under ``DIR/forgetting-pretrain-<sha256>``,
the hash over everything that decides those weights (the job's spec without its paths, the model
config, the generated data's bytes, the trainer's and API package's sources, the
torch/open_clip/numpy/Pillow/Python versions, the CPU kind). A later run with the same inputs
reuses it; any change trains it again. It is written to a temporary directory next to it and
renamed into place, so a reader never sees a half-written model. Step 2, the fine-tune whose
results are measured, always runs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import yaml

from devkit import jobs
from devkit.paths import REPO
from devkit.tiny_model import tiny_model

PLACES = ("at the top left", "at the top right", "at the bottom left", "at the bottom right", "in the middle")
TEMPLATES = [f"a {{}} {p}" for p in PLACES]


def zeroshot_csv(val_csv: Path) -> Path:
    """A's val images labelled "<colour> <shape>" (from their captions): 32 classes."""
    out = val_csv.with_name("zeroshot.csv")
    with open(val_csv, newline="") as f, open(out, "w", newline="") as g:
        w = csv.writer(g, lineterminator="\n")
        w.writerow(["filepath", "label"])
        for row in csv.DictReader(f):
            w.writerow([row["filepath"], " ".join(row["caption"].split()[1:3])])
    return out


def job(
    root: Path, name: str, model: str, train_csv: Path, val_csv: Path, out: Path, training: dict, extra: dict
) -> Path:
    doc = jobs.local_job(
        name,
        model=model,
        train_csv=train_csv,
        val_csv=val_csv,
        output=out,
        training={"workers": 0, "checkpointEverySteps": 0, "logEverySteps": 50, **training},
        **extra,
    )
    return jobs.write(doc, root / f"{name}.yaml")


def run(manifest: Path, log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log, "w") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "trainer", str(manifest)], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    if rc != 0:
        raise SystemExit(f"{manifest} failed ({rc}), see {log}:\n" + log.read_text()[-3000:])


#: A kept pre-training unused this long is deleted by the next run that writes one (old keys pile up).
CACHE_KEEP_S = 7 * 24 * 3600


def pretrain_key(manifest: Path, model_dir: Path, data_dir: Path) -> str:
    """sha256 over what decides the pre-trained weights: the job's spec (paths left out), the model
    config and the generated data's files, the trainer's and API package's sources, the versions of
    the numeric stack and the CPU kind."""
    spec = yaml.safe_load(manifest.read_text())["spec"]
    spec["model"]["name"] = "local-dir:"
    spec["dataset"] = {k: Path(v).name if k.endswith("Csv") else v for k, v in spec["dataset"].items()}
    spec["output"].pop("path")
    inputs = {
        "spec": spec,
        "versions": {pkg: version(pkg) for pkg in ("torch", "open_clip_torch", "numpy", "pillow")},
        "python": sys.version,
        "machine": platform.machine(),
    }
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    for base, pattern in [(model_dir, "*"), (data_dir, "*"), (REPO / "trainer", "*.py"), (REPO / "kubeclip", "*.py")]:
        for f in sorted(p for p in base.rglob(pattern) if p.is_file() and p.name != ".generated"):
            h.update(str(f.relative_to(base)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def pretrain(root: Path, model: str, a_train: Path, a_val: Path, training: dict, cache: Path | None) -> Path:
    """Step 1: train ``model`` (``local-dir:DIR``) on domain A; return its ``final/`` (from ``cache`` when
    it holds this exact run, see the module's docstring)."""
    out = root / "pretrain"
    manifest = job(root, "pretrain", model, a_train, a_val, out, training, {})
    if cache is None:
        if not (out / "final" / "metrics.json").is_file():
            run(manifest, root / "pretrain.log")
        return out / "final"
    kept = (
        cache / f"forgetting-pretrain-{pretrain_key(manifest, Path(model.removeprefix('local-dir:')), a_train.parent)}"
    )
    if (kept / "final" / "metrics.json").is_file():
        os.utime(kept)  # in use: not pruned
        return kept / "final"
    run(manifest, root / "pretrain.log")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kept.name}-", dir=cache))
    try:
        shutil.copytree(out / "final", tmp / "final")
        shutil.copy(root / "pretrain.log", tmp / "pretrain.log")
        try:
            tmp.rename(kept)
        except OSError:  # another run renamed the same result into place first
            if not (kept / "final" / "metrics.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in cache.glob("forgetting-pretrain-*"):
        try:
            unused_s = time.time() - old.stat().st_mtime
        except OSError:  # pruned by another run meanwhile
            continue
        if old != kept and unused_s > CACHE_KEEP_S:
            shutil.rmtree(old, ignore_errors=True)
    return kept / "final"


def setup(
    root: Path,
    *,
    n_a=512,
    n_b=256,
    val_n=256,
    pre_epochs=20,
    pre_lr=2e-3,
    ft_epochs=6,
    ft_lr=1e-3,
    batch=32,
    ft_seed=0,
    alphas=(0.25, 0.5, 0.75),
    select=None,
    cache: Path | None = None,
) -> dict:
    """Run both steps under ``root`` (step 1 from ``cache`` when it holds it, see the module's docstring);
    return the fine-tune's ``final/metrics.json`` and paths."""
    from trainer.sample_data import generate

    a_train, a_val = generate(root / "data-a", n=n_a, val_n=val_n, size=32, seed=0)
    b_train, b_val = generate(root / "data-b", n=n_b, val_n=val_n, size=32, seed=0, domain="bars")
    tiny = tiny_model(root, name="tiny")
    pre_training = {"epochs": pre_epochs, "batchSize": batch, "learningRate": pre_lr, "warmupSteps": 5}
    pre_final = pretrain(root, tiny, a_train, a_val, pre_training, cache)
    ft_out = root / "finetune"
    export = {"wiseFtAlphas": list(alphas), "allAlphas": True, **(select or {})}
    ft = job(
        root,
        "finetune",
        f"local-dir:{pre_final}",
        b_train,
        b_val,
        ft_out,
        {"epochs": ft_epochs, "batchSize": batch, "learningRate": ft_lr, "warmupSteps": 2, "seed": ft_seed},
        {
            "evaluation": {
                "retentionCsv": str(a_val),
                "zeroShot": {"csv": str(zeroshot_csv(a_val)), "templates": TEMPLATES},
            },
            "export": export,
        },
    )
    run(ft, root / "finetune.log")
    return {
        "metrics": json.loads((ft_out / "final" / "metrics.json").read_text()),
        "pretrain": pre_final,
        "finetune": ft_out,
        "log": (root / "finetune.log").read_text(),
        "manifest": ft,
    }


def table(m: dict) -> str:
    rows = [
        "| alpha | val i2t R@1 (domain B) | retention i2t R@1 (domain A) | zero-shot top-1 (A, 32 classes) |",
        "|---|---|---|---|",
    ]
    for e in m["wiseft"]:
        rows.append(
            f"| {e['alpha']:.2f} | {e['val']['image_to_text_R@1']:.3f} | {e['retention']['image_to_text_R@1']:.3f} | "
            f"{e['zeroshot']['top1']:.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/forgetting")
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-epochs", type=int, default=6)
    ap.add_argument("--ft-seed", type=int, default=0)
    ap.add_argument("--val-n", type=int, default=256)
    ap.add_argument("--max-retention-drop", type=float, default=0.1, help="spec.export.maxRetentionDrop")
    a = ap.parse_args()
    r = setup(
        Path(a.out),
        ft_lr=a.ft_lr,
        ft_epochs=a.ft_epochs,
        ft_seed=a.ft_seed,
        val_n=a.val_n,
        select={"select": "bestWithinRetentionDrop", "maxRetentionDrop": a.max_retention_drop},
    )
    print(table(r["metrics"]))
    print("exported alpha", r["metrics"]["exported_alpha"], "-", r["metrics"]["export_policy"])


if __name__ == "__main__":
    main()
