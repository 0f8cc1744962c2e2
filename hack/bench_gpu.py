#!/usr/bin/env python3
"""kubeclip's trainer vs open_clip_train 3.3.0 on one GPU: ViT-B-32, bf16 autocast, batch 256.

What ``make bench-gpu`` runs. Needs only this repository, the project's environment (torch,
torchvision, open_clip_torch, the trainer's requirements) and, for the peer,
``open_clip_torch[training]==3.3.0``, which it installs into its own virtualenv (from the package
index, or ``--wheels DIR`` on a machine without network: see ``hack/peer/peer_env.py``).

Steps, all in one run:
  1. generate ``--n`` JPEGs (default: enough for the steps below, at least 20,000; 256 px,
     varied content; ``hack/peer/dataset.py`` in parallel processes), or reuse them;
  2. count the model's FLOPs per training sample (image + text tower, forward + backward,
     ``torch.utils.flop_counter`` on the real model at batch 2, so attention is counted as run);
  3. run open_clip_train, then kubeclip, each for one epoch of ``(warmup + steps) x batch``
     images, same model (random init), data, batch, workers, precision (``amp_bf16``: bf16
     autocast), optimizer settings and seed, each logging every step;
  4. report, for the ``--steps`` timed steps after ``--warmup-steps``: samples/s, data-wait share
     (time waiting for the next batch / step wall time), peak GPU memory (nvidia-smi, device
     used memory minus the idle level: CUDA context and allocator cache included, the same
     for both; kubeclip's own ``torch.cuda.max_memory_allocated`` as well) and MFU = samples/s x
     FLOPs per sample / the card's peak dense bf16 FLOP/s (``PEAK_BF16_TFLOPS`` by device name,
     ``--peak-tflops`` to override).

How steps are timed, the same wall-clock quantity for both: open_clip_train's per-step
``Batch (t)`` (end of the previous step to end of this one, data wait included) summed over
the window; kubeclip's log-line timestamps (ms) of the step before the window and of its
last step. Data wait: open_clip_train's ``Data (t)``, kubeclip's ``data_wait`` per step.

    python hack/bench_gpu.py [--wheels DIR] [--steps 100 --warmup-steps 30] [--workers 12] [--out DIR]

Writes ``OUT/bench_gpu.json`` and ``OUT/bench_gpu.md`` and prints the table last. ``--device
cpu`` with a ``local-dir:`` model runs the same pipeline without a GPU (the test does this).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO)]

from peer import dataset, measure, oc_log, peer_env  # noqa: E402

CACHE = Path(os.environ.get("KUBECLIP_BENCH_CACHE", Path.home() / ".cache" / "kubeclip" / "bench"))

#: Peak dense (no sparsity) bf16 tensor-core TFLOP/s from the vendors' datasheets, matched in this
#: order against ``torch.cuda.get_device_name()``. SXM parts unless the name says otherwise.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) step (\d+)/\d+ .*? data_wait ([\d.]+)s")


def peak_tflops(device_name: str):
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tf
    return None


def flops_per_sample(model_name: str, device: str) -> float:
    """Training FLOPs of one image-caption pair: both towers forward + backward and the loss."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model = open_clip.create_model(model_name, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    b = 2
    images = torch.randn(b, 3, size, size, device=device)
    texts = tokenizer(["a photo of a red circle in the top left", "a blue square"]).to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(texts, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(b, device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
    return counter.get_total_flops() / b


def window(values: list, warm: int, steps: int, what: str) -> list:
    if len(values) < warm + steps:
        raise SystemExit(f"[bench] {what}: {len(values)} steps logged, the window needs {warm + steps}")
    return values[warm : warm + steps]


def run_peer(peer: tuple, work: Path, csv: Path, a, device: str) -> dict:
    peer_py, peer_environ = peer
    name = "open_clip_train"
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cmd = [
        peer_py,
        "-m",
        "open_clip_train.main",
        *dataset.oc_csv_args(csv),
        "--model",
        a.model,
        "--epochs",
        1,
        "--batch-size",
        a.batch,
        "--workers",
        a.workers,
        "--precision",
        a.precision,
        "--device",
        device,
        "--lr",
        a.lr,
        "--warmup",
        a.lr_warmup,
        "--wd",
        0.2,
        "--beta1",
        0.9,
        "--beta2",
        0.98,
        "--eps",
        1e-6,
        "--seed",
        0,
        "--log-every-n-steps",
        1,
        "--save-frequency",
        0,
        "--logs",
        run / "logs",
        "--name",
        name,
    ]
    out_log = run / "logs" / name / "out.log"
    res = measure.run(
        cmd,
        run,
        run / "console.log",
        env=peer_environ,
        marker="Train Epoch: 0 [",
        marker_file=out_log,
        gpu=device == "cuda",
        timeout=a.run_timeout,
    )
    rows = window(oc_log.steps(out_log), a.warmup_steps, a.steps, name)
    step_s = sum(r["step_s"] for r in rows)
    res.update(
        samples_per_s=round(a.steps * a.batch / step_s, 1),
        data_wait_share=round(sum(r["data_s"] for r in rows) / step_s, 4),
        final_loss=rows[-1]["loss"],
    )
    return res


def run_kubeclip(work: Path, csv: Path, a, device: str, gpu_decode: bool = True) -> dict:
    name = "kubeclip" if gpu_decode else "kubeclip_pil"
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    manifest = run / "job.yaml"
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": "kubeclip.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "bench-gpu"},
                "spec": {
                    "model": {"name": a.model},
                    "dataset": {"trainCsv": str(csv), "separator": ","},
                    "training": {
                        "epochs": 1,
                        "batchSize": a.batch,
                        "learningRate": a.lr,
                        "warmupSteps": a.lr_warmup,
                        "weightDecay": 0.2,
                        "workers": a.workers,
                        "precision": a.precision,
                        "seed": 0,
                        "checkpointEverySteps": 0,
                        "logEverySteps": 1,
                        "gpuDecode": gpu_decode,
                    },
                    "output": {"path": str(run / "out")},
                    "metrics": {"port": 0},
                },
            }
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer picks CUDA whenever it sees a GPU
    log = run / "console.log"
    res = measure.run(
        [sys.executable, "-m", "trainer", manifest],
        run,
        log,
        env=env,
        marker=" step 1/",
        gpu=device == "cuda",
        timeout=a.run_timeout,
    )
    res["gpu_data_path"] = "GPU data path: " in log.read_text(errors="replace")
    stamps, waits = [], []
    for line in log.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m:
            stamps.append(datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp())
            waits.append(float(m[3]))
    # the window's time: from the end of step `warmup` to the end of step `warmup + steps`
    if a.warmup_steps < 1:
        raise SystemExit("[bench] --warmup-steps must be at least 1 (kubeclip's window starts at a step's log line)")
    t = window(stamps, a.warmup_steps - 1, a.steps + 1, name)
    elapsed = t[-1] - t[0]
    wait = sum(window(waits, a.warmup_steps, a.steps, name))
    m = json.loads((run / "out" / "final" / "metrics.json").read_text())
    res.update(
        samples_per_s=round(a.steps * a.batch / elapsed, 1),
        data_wait_share=round(wait / elapsed, 4),
        final_loss=round(m["train_loss"], 4),
        trainer_data_wait_share=m.get("data_wait_share"),
        trainer_max_memory_allocated_mib=round(m.get("peak_gpu_memory_bytes", 0) / 2**20),
    )
    return res


def decode_throughput(csv: Path, model: str, batch: int, batches: int, device: str = "cuda") -> dict:
    """Images/s of ``trainer.gpu_data`` alone: decode + crop/resize + normalise, files read beforehand."""
    import numpy as np
    import open_clip
    import torch

    from trainer.gpu_data import BatchDecoder, RawCaptionDataset, collate_raw, plan_from_transform
    from trainer.preflight import Table

    _, tf, _ = open_clip.create_model_and_transforms(model, aug_cfg={"scale": (0.9, 1.0)})
    plan = plan_from_transform(tf)
    import csv as csvlib

    with open(csv, newline="") as f:
        rows = list(csvlib.reader(f))[1 : batch * batches + 1]
    paths = np.array([r[0] for r in rows], dtype=object)
    ds = RawCaptionDataset(
        Table(csv=str(csv), separator=",", paths=paths, captions=np.array(["x"] * len(paths), dtype=object)),
        plan,
        open_clip.get_tokenizer(model),
        0,
    )
    raw = [collate_raw([ds[(0, i)] for i in range(b * batch, (b + 1) * batch)]) for b in range(batches)]
    cuda = device == "cuda"
    if cuda:
        raw = [{**r, "jpeg": r["jpeg"].pin_memory()} for r in raw]
    dec = BatchDecoder(plan, torch.device(device))
    dec(raw[0])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for r in raw[1:]:
        dec(r)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images_per_s": round((batches - 1) * batch / dt, 1), "batch": batch, "batches_timed": batches - 1}


def table(report: dict) -> str:
    r, s = report["results"], report["settings"]
    lines = [
        f"{report['device']} · {s['model']} random init, {report['image_size']} px, batch {s['batch']}, "
        f"{s['workers']} workers, {s['precision']}, {s['steps']} timed steps after {s['warmup_steps']} · "
        f"torch {report['torch']} · {report['date']}",
        "",
        "| | samples/s | data-wait share | peak GPU memory (nvidia-smi) | MFU | time to first step | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in r.items():
        mfu = f"{v['mfu']:.1%}" if v.get("mfu") is not None else "n/a"
        mem = f"{v['peak_gpu_mem_mib'] / 1024:.1f} GiB" if v.get("peak_gpu_mem_mib") is not None else "n/a"
        lines.append(
            f"| {k} | {v['samples_per_s']} | {v['data_wait_share']:.1%} | {mem} | {mfu} | "
            f"{v['time_to_first_step_s']} s | {v['wall_s']} s |"
        )
    if "kubeclip" in r and "open_clip_train" in r:
        ratio = r["kubeclip"]["samples_per_s"] / r["open_clip_train"]["samples_per_s"]
        lines.append(f"| **ratio kubeclip / open_clip_train** | **{ratio:.2f}** | | | | | |")
    lines.append("")
    if report.get("decode"):
        lines.append(
            f"kubeclip's GPU decode alone (nvJPEG + crop/resize + normalise, one process): "
            f"{report['decode']['images_per_s']} images/s"
        )
    lines.append(
        f"FLOPs per sample (forward + backward, both towers): {report['flops_per_sample'] / 1e9:.1f} GFLOP; "
        f"peak bf16: {report['peak_tflops']} TFLOP/s"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model name or local-dir:PATH (random init)")
    ap.add_argument("--batch", type=int, default=256, help="batch per GPU")
    ap.add_argument("--workers", type=int, default=12, help="data-loader workers (both trainers)")
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=30, help="steps run before the timed window")
    ap.add_argument("--n", type=int, default=0, help="images (default: max(20000, (warmup + steps) x batch))")
    ap.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    ap.add_argument("--precision", default="amp_bf16")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-warmup", type=int, default=10, help="learning-rate warmup steps")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the pipeline without a GPU (tests)")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's peak dense bf16 TFLOP/s (default: by name)"
    )
    ap.add_argument(
        "--decode-batches",
        type=int,
        default=20,
        help="on CUDA, also time kubeclip's GPU decode alone over this many batches (0: skip)",
    )
    ap.add_argument("--decode-on-cpu", action="store_true", help="time the decode path on CPU too (tests)")
    ap.add_argument("--wheels", type=Path, default=None, help="install the peer offline from the wheels in this folder")
    ap.add_argument(
        "--also-pil",
        action="store_true",
        help="also run kubeclip with gpuDecode: false (PIL in the loader workers), as 'kubeclip_pil'",
    )
    ap.add_argument(
        "--run-timeout", type=float, default=0, help="kill a trainer run after this many seconds (0: never)"
    )
    ap.add_argument("--only", choices=["both", "kubeclip", "open_clip_train"], default="both")
    ap.add_argument("--work", type=Path, default=CACHE / "gpu", help="data, peer venv and run folders")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-gpu", help="where the results go")
    a = ap.parse_args(argv)

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("[bench] no CUDA device here (use --device cpu to run the pipeline on the CPU)")
    device_name = (
        torch.cuda.get_device_name(0)
        if a.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    a.n = a.n or max(20000, (a.warmup_steps + a.steps) * a.batch)
    work = a.work.resolve()  # the runs start in their own folders
    work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    peer = peer_env.ensure(work / "peer", a.wheels) if a.only != "kubeclip" else None
    print(f"[bench] peer ready ({time.time() - t0:.1f} s)", file=sys.stderr)
    t0 = time.time()
    csv = dataset.make(work / f"data-{a.n}-{a.size}", a.n, a.size)["train"]
    print(f"[bench] {a.n} images of {a.size} px ready ({time.time() - t0:.1f} s)", file=sys.stderr)
    flops = flops_per_sample(a.model, a.device)
    import open_clip

    size = (
        open_clip.get_model_config(a.model)["vision_cfg"]["image_size"]
        if not a.model.startswith("local-dir:")
        else json.loads((Path(a.model[10:]) / "open_clip_config.json").read_text())
        .get("model_cfg", {})
        .get("vision_cfg", {})
        .get("image_size")
    )
    peak = a.peak_tflops or (peak_tflops(device_name) if a.device == "cuda" else None)
    report = {
        "device": device_name,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": os.environ.get("KUBECLIP_COMMIT", ""),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "image_size": size,
        "flops_per_sample": flops,
        "peak_tflops": peak,
        "results": {},
    }
    order = [k for k in ("open_clip_train", "kubeclip") if a.only in ("both", k)]
    if a.also_pil and a.only != "open_clip_train":
        order.append("kubeclip_pil")
    failed = []
    for who in order:
        try:  # one side failing still measures the other
            if who == "open_clip_train":
                res = run_peer(peer, work, csv, a, a.device)
            else:
                res = run_kubeclip(work, csv, a, a.device, gpu_decode=who == "kubeclip")
        except SystemExit as e:
            print(str(e), file=sys.stderr)
            failed.append(f"{who}: {str(e).splitlines()[0]}")
            continue
        res["mfu"] = round(res["samples_per_s"] * flops / (peak * 1e12), 6) if peak else None
        report["results"][who] = res
        print(f"[bench] {who}: {json.dumps(res)}", file=sys.stderr)
    if a.decode_batches and (a.device == "cuda" or a.decode_on_cpu):
        try:  # a failure here must not lose the trainers' figures
            report["decode"] = decode_throughput(csv, a.model, a.batch, a.decode_batches, a.device)
            print(f"[bench] decode alone: {json.dumps(report['decode'])}", file=sys.stderr)
        except Exception as e:
            failed.append(f"decode timing: {type(e).__name__}: {e}")
    report["failed"] = failed
    md = table(report)
    (a.out / "bench_gpu.json").write_text(json.dumps(report, indent=1))
    (a.out / "bench_gpu.md").write_text(md + "\n")
    print(md)
    if failed:
        raise SystemExit("[bench] failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
