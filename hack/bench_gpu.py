#!/usr/bin/env python3
"""kubeclip's trainer vs open_clip_train 3.3.0 at its best, on one GPU: ViT-B-32, bf16 autocast, batch 256.

What ``make bench-gpu`` runs. Needs only this repository, the project's environment (torch,
torchvision, open_clip_torch, the trainer's requirements) and, for the peer,
``open_clip_torch[training]==3.3.0``, which it installs into its own virtualenv (from the package
index, or ``--wheels DIR`` on a machine without network: see ``hack/peer/peer_env.py``).

Steps, all in one run, each result written to ``OUT/bench_gpu.json`` as soon as it exists (a run
cut short keeps what it measured):
  1. generate ``--n`` JPEGs (default: enough for one run, at least 20,000; 256 px, varied content,
     captions naming the shapes: ``hack/peer/dataset.py``), or reuse them;
  2. FLOPs per training sample (both towers, forward + backward, ``torch.utils.flop_counter`` on
     the real model at batch 2): at the full text context (**model FLOPs**) and at the text lengths
     kubeclip's exact truncation runs on this dataset (**executed FLOPs**, ``trainer.truncate``);
  3. **step profile** (``--profile``; kubeclip's own ``Recipe.train_step`` in this process, on real
     batches of the dataset loaded beforehand, so no data wait): samples/s, MFU on model and on
     executed FLOPs, peak ``max_memory_allocated``, kernels per step and GPU-busy share (the union
     of the GPU's kernel intervals / wall time, torch profiler, a few extra steps) for each
     variant: eager at full text length, eager truncated, compiled truncated; and a ViT-L-14 row
     (``--large-model``, batch ``--large-batch``, eager truncated; ``--large-compile`` adds the
     compiled row);
  4. **end-to-end runs** (``--configs``): open_clip_train in its default form and with
     ``--torchcompile``, kubeclip with its defaults and with ``training.compile: true``; each a
     whole process, one epoch of ``(warmup + steps + 1) x batch`` images, same model (random
     init), data, batch, workers, precision, optimizer settings and seed, logging every
     ``--log-every`` steps (both). ``--rounds`` rounds, the order reversed every other round
     (A B C D, D C B A, ...), so drifting machine speed hits every configuration alike; no new
     run starts once ``--budget-s`` seconds have passed (what was skipped is listed).

How the end-to-end figures are measured, the same way for both trainers:
  * window: the ``--steps`` steps after ``--warmup-steps`` (both multiples of ``--log-every``);
    its wall time from open_clip_train's per-interval ``Batch (t)`` (mean since its previous log
    line x the steps in between) and from kubeclip's log-line timestamps (ms; a log step reads
    the loss, so its timestamp follows the GPU);
  * data wait: the time the training loop blocks in ``next()`` on its loader; kubeclip logs it
    (``data_wait``: the mean over the steps since the previous log line), the peer is started
    through ``hack/peer/oc_train.py``, which times the same ``next()`` calls
    (``KUBECLIP_PEER_WAIT_LOG``; the peer's own ``Data (t)`` also holds its log step's GPU drain);
  * GPU-busy share: ``nvidia-smi``'s ``utilization.gpu`` (share of time a kernel ran), sampled
    every 100 ms and averaged over the window;
  * peak GPU memory: ``nvidia-smi``'s used memory minus the idle level (``hack/peer/measure.py``);
  * MFU = samples/s x FLOPs per sample / the card's peak dense bf16 FLOP/s
    (``PEAK_BF16_TFLOPS`` by device name, ``--peak-tflops`` to override), on model FLOPs and, for
    kubeclip, on executed FLOPs.
The ratio is kubeclip's best configuration over the peer's best, both by mean samples/s over
their windows.

    python -m hack.bench_gpu [--wheels DIR] [--rounds 2] [--steps 100 --warmup-steps 30] [--out DIR]

``--device cpu`` with a ``local-dir:`` model runs the same pipeline without a GPU (the test does
this; no utilization, no kernel counts).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from devkit.jobs import local_job
from devkit.paths import REPO
from hack.peer import dataset, measure, oc_log, peer_env

CACHE = Path(os.environ.get("KUBECLIP_BENCH_CACHE", Path.home() / ".cache" / "kubeclip" / "bench"))

#: Peak dense (no sparsity) bf16 tensor-core TFLOP/s from the vendors' datasheets (half the
#: "with sparsity" figure), matched in this order against ``torch.cuda.get_device_name()``:
#: the NVL and PCIe parts run at lower clocks/power than the SXM ones, so their names come first.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # H200 SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("H800 PCIe", 756.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]

#: kubeclip's log line: timestamp, step, mean data wait since the previous log line
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) step (\d+)/\d+ .*? data_wait ([\d.]+)s")

CONFIGS = ("open_clip_train", "open_clip_train_compile", "kubeclip", "kubeclip_compile")


def peak_tflops(device_name: str):
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tf
    return None


def flops_per_sample(model_name: str, device: str, text_len: int | None = None) -> float:
    """Training FLOPs of one image-caption pair: both towers forward + backward and the loss.

    ``text_len``: run the text tower on that many positions (kubeclip's exact truncation), else
    on the model's whole context.
    """
    import open_clip
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from trainer import truncate

    model = open_clip.create_model(model_name, device=device)
    tokenizer = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    b = 2
    images = torch.randn(b, 3, size, size, device=device)
    texts = tokenizer(["a photo of a red circle in the top left", "a blue square"]).to(device)
    if text_len is not None and text_len < texts.shape[1]:
        cut, _ = truncate.enable(model)
        if cut is not None:
            texts = texts[:, :text_len]
    counter = FlopCounterMode(display=False)
    with counter:
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(texts, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(b, device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
    return counter.get_total_flops() / b


def text_lengths(csv: Path, model_name: str, batch: int, batches: int = 20, seed: int = 0) -> list[int]:
    """The bucketed text length kubeclip's truncation gives ``batches`` random batches of this dataset."""
    import csv as csvlib

    import numpy as np
    import open_clip

    from trainer import truncate

    model = open_clip.create_model(model_name)
    cut, _ = truncate.plan(model)
    with open(csv, newline="") as f:
        captions = [r[1] for r in list(csvlib.reader(f))[1:]]
    tokens = open_clip.get_tokenizer(model_name)(captions)
    if cut is None:
        return [tokens.shape[1]] * batches
    rng = np.random.default_rng(seed)
    return [
        cut.length(tokens[rng.choice(len(captions), size=min(batch, len(captions)), replace=False)])
        for _ in range(batches)
    ]


def executed_flops(model_name: str, device: str, lengths: list[int]) -> float:
    per_len = {n: flops_per_sample(model_name, device, n) for n in set(lengths)}
    return sum(per_len[n] for n in lengths) / len(lengths)


class UtilSampler:
    """``nvidia-smi`` GPU utilization every 100 ms with wall-clock stamps, while a run lasts."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None
        self.thread = None

    def __enter__(self):
        smi = shutil.which("nvidia-smi")
        if smi:
            self.proc = subprocess.Popen(
                [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0", "-lms", "100"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append((time.time(), float(line.strip())))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.thread.join(timeout=2)

    def mean(self, t0: float, t1: float) -> float | None:
        """Mean utilization (a share, 0..1) of the samples taken in ``[t0, t1]``."""
        inside = [u for t, u in self.samples if t0 <= t <= t1]
        return round(statistics.fmean(inside) / 100, 4) if inside else None


def check_window(a) -> None:
    if a.warmup_steps < a.log_every or a.warmup_steps % a.log_every or a.steps % a.log_every:
        raise SystemExit(
            f"[bench] --warmup-steps ({a.warmup_steps}) and --steps ({a.steps}) must be multiples of --log-every "
            f"({a.log_every}), warmup at least one interval"
        )


def run_peer(peer: tuple, work: Path, csv: Path, a, device: str, name: str, compiled: bool) -> dict:
    peer_py, peer_environ = peer
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    waits_file = run / "waits.json"
    cmd = [
        peer_py,
        REPO / "hack" / "peer" / "oc_train.py",
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
        a.log_every,
        "--save-frequency",
        0,
        "--logs",
        run / "logs",
        "--name",
        name,
        *(["--torchcompile"] if compiled else []),
    ]
    out_log = run / "logs" / name / "out.log"
    env = dict(peer_environ, KUBECLIP_PEER_WAIT_LOG=str(waits_file))
    with UtilSampler() as util:
        res = measure.run(
            cmd,
            run,
            run / "console.log",
            env=env,
            marker="Train Epoch: 0 [",
            marker_file=out_log,
            gpu=device == "cuda",
            timeout=a.run_timeout,
        )
    # each log line: the mean Batch (t) over the steps since the previous one; `seen` counts samples
    rows, prev, lines = oc_log.steps(out_log), 0, []
    for r in rows:
        done = r["seen"] // a.batch
        lines.append((done, done - prev, r))
        prev = done
    # open_clip_train logs after steps 1, 11, 21, ... (its i counts from 0): the window starts at the
    # first of its log lines at or after the warm-up and spans --steps steps (the epoch has one spare)
    start = min((done for done, _, _ in lines if done >= a.warmup_steps), default=None)
    if start is None:
        raise SystemExit(f"[bench] {name}: no log line after the warm-up ({len(rows)} lines)")
    inside = [(n, r) for done, n, r in lines if start < done <= start + a.steps]
    if sum(n for n, _ in inside) != a.steps:
        raise SystemExit(f"[bench] {name}: its log does not cover steps {start + 1}..{start + a.steps}")
    elapsed = sum(n * r["step_s"] for n, r in inside)
    waits = json.loads(waits_file.read_text())
    if len(waits) < start + a.steps:
        raise SystemExit(f"[bench] {name}: {len(waits)} loader calls timed, the window needs {start + a.steps}")
    window = waits[start : start + a.steps]  # call i returns batch i (0-based): steps start+1 .. start+steps
    res.update(
        samples_per_s=round(a.steps * a.batch / elapsed, 1),
        data_wait_share=round(sum(w for _, w in window) / elapsed, 4),
        peer_data_t_share=round(sum(n * r["data_s"] for n, r in inside) / elapsed, 4),
        gpu_busy_share=util.mean(window[0][0], window[-1][0] + elapsed / a.steps),
        final_loss=rows[-1]["loss"],
    )
    return res


def kubeclip_manifest(run: Path, csv: Path, a, compiled: bool, gpu_decode: bool) -> Path:
    manifest = run / "job.yaml"
    doc = local_job(
        "bench-gpu",
        model=a.model,
        train_csv=csv,
        dataset={"separator": ","},
        output=run / "out",
        training={
            "epochs": 1,
            "batchSize": a.batch,
            "learningRate": a.lr,
            "warmupSteps": a.lr_warmup,
            "weightDecay": 0.2,
            "workers": a.workers,
            "precision": a.precision,
            "checkpointEverySteps": 0,
            "logEverySteps": a.log_every,
            "gpuDecode": gpu_decode,
            "compile": compiled,
        },
    )
    manifest.write_text(json.dumps(doc))  # JSON (a YAML subset): profile_variant reads it back with json
    return manifest


def run_kubeclip(work: Path, csv: Path, a, device: str, name: str, compiled: bool, gpu_decode: bool = True) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    manifest = kubeclip_manifest(run, csv, a, compiled, gpu_decode)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the trainer picks CUDA whenever it sees a GPU
    log = run / "console.log"
    with UtilSampler() as util:
        res = measure.run(
            [sys.executable, "-m", "trainer", manifest],
            run,
            log,
            env=env,
            marker=" step 1/",
            gpu=device == "cuda",
            timeout=a.run_timeout,
        )
    text = log.read_text(errors="replace")
    res["gpu_data_path"] = "GPU data path: " in text
    res["text_truncation"] = "text truncation on" in text
    lines = {}
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            lines[int(m[2])] = (datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), float(m[3]))
    first, last = a.warmup_steps, a.warmup_steps + a.steps
    marks = list(range(first, last + 1, a.log_every))
    if any(k not in lines for k in marks):
        raise SystemExit(f"[bench] {name}: log lines of steps {marks} expected, found {sorted(lines)[:20]}")
    elapsed = lines[last][0] - lines[first][0]
    wait = sum(lines[k][1] * a.log_every for k in marks[1:])  # each line: the mean over its interval
    m = json.loads((run / "out" / "final" / "metrics.json").read_text())
    res.update(
        samples_per_s=round(a.steps * a.batch / elapsed, 1),
        data_wait_share=round(wait / elapsed, 4),
        gpu_busy_share=util.mean(lines[first][0], lines[last][0]),
        final_loss=round(m["train_loss"], 4),
        compile_seconds=m.get("compile_seconds"),
        trainer_max_memory_allocated_mib=round(m.get("peak_gpu_memory_bytes", 0) / 2**20),
    )
    return res


def step_profile(csv: Path, a, model: str, batch: int, variants: list[tuple], device: str) -> dict:
    """kubeclip's ``Recipe.train_step`` in this process on preloaded real batches, per variant
    ``(name, truncate, compile, read the loss every step)``: samples/s, peak memory, kernels per
    step, GPU-busy share. The last flag puts back the per-step ``.item()`` the loop had before it
    kept the loss on the device, so that change is measured on its own too."""
    import torch

    out = {}
    for name, trunc, compiled, sync in variants:
        out[name] = profile_variant(csv, a, model, batch, name, trunc, compiled, sync, device)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"[bench] step profile {name}: {json.dumps(out[name])}", file=sys.stderr)
    return out


def profile_variant(
    csv: Path, a, model: str, batch: int, name: str, trunc: bool, compiled: bool, sync: bool, device: str
) -> dict:
    import torch

    from trainer.__main__ import load
    from trainer.preflight import read_tables
    from trainer.train import Recipe

    run = a.work / "profile" / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    sub = argparse.Namespace(**{**vars(a), "model": model, "batch": batch, "workers": min(a.workers, 4)})
    manifest = kubeclip_manifest(run, csv, sub, compiled, gpu_decode=True)
    doc = json.loads(manifest.read_text())
    doc["spec"]["training"]["truncateText"] = trunc
    manifest.write_text(json.dumps(doc))
    job, spec = load(str(manifest), None)
    r = Recipe(job, spec, read_tables(spec))
    cuda = device == "cuda"
    try:
        r.setup()
        it = r.first_batches or iter(r.loader)
        held = [next(it) for _ in range(min(a.profile_warmup + a.profile_steps, 8))]  # real batches, decoded
        lengths = [int(b[1].shape[1]) for b in held]

        def steps(k: int) -> None:
            for i in range(k):
                r.train_step(iter([held[i % len(held)]]))
                if sync:
                    float(r.losses.last)
            if cuda:
                torch.cuda.synchronize()

        t0 = time.perf_counter()
        steps(max(a.profile_warmup, len(held)))  # every held batch once: compiles each text length
        warm_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        steps(a.profile_steps)
        dt = time.perf_counter() - t0
        r.losses.check(0)
        res = {
            "model": model,
            "batch": batch,
            "truncate": trunc,
            "compile": compiled,
            "loss_read_every_step": sync,
            "text_lengths": sorted(set(lengths)),
            "samples_per_s": round(a.profile_steps * batch / dt, 1),
            "step_ms": round(1000 * dt / a.profile_steps, 2),
            "warmup_s": round(warm_s, 1),
            "peak_mem_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        }
        if cuda and a.profile_trace_steps:
            try:  # the profiler's view is extra: its failure keeps the timings
                res.update(trace(steps, a.profile_trace_steps))
            except Exception as e:
                res["trace_error"] = f"{type(e).__name__}: {e}"
        return res
    finally:
        if r.metrics is not None:
            r.metrics.close(0)


def trace(steps, k: int) -> dict:
    """Kernels per step and GPU-busy share (union of device-side intervals / wall) over ``k`` steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        steps(k)
        wall_us = (time.perf_counter() - t0) * 1e6
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, end = 0.0, None
    for s, e in spans:
        if end is None or s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return {"kernels_per_step": round(len(spans) / k), "gpu_busy_share_profiled": round(min(1.0, busy / wall_us), 4)}


def decode_throughput(csv: Path, model: str, batch: int, batches: int, device: str = "cuda") -> dict:
    """Images/s of ``trainer.gpu_data`` alone: decode + crop/resize + normalise, files read beforehand."""
    import numpy as np
    import open_clip
    import torch

    from trainer.gpu_data import BatchDecoder, RawCaptionDataset, collate_raw, plan_from_transform
    from trainer.table import Table

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


def pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "n/a"


def table(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"{report['device']} · torch {report['torch']} · commit {report['commit'] or 'n/a'} · {report['date']}",
        "",
        f"FLOPs per sample (forward + backward, both towers): model {report['flops_per_sample'] / 1e9:.1f} GFLOP "
        f"(text at full context), executed {report['executed_flops_per_sample'] / 1e9:.1f} GFLOP (text cut to "
        f"{report['text_lengths']} tokens); peak bf16: {report['peak_tflops']} TFLOP/s",
    ]
    if report.get("profile"):
        lines += [
            "",
            "Step profile: kubeclip's train_step on preloaded batches (no data wait), "
            f"{s['profile_steps']} timed steps after {s['profile_warmup']}",
            "",
            "| variant | model | batch | text len | samples/s | step | MFU (model) | MFU (executed) | kernels/step "
            "| GPU busy | peak alloc |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k, v in report["profile"].items():
            mem = f"{v['peak_mem_allocated_mib'] / 1024:.1f} GiB" if v.get("peak_mem_allocated_mib") else "n/a"
            lines.append(
                f"| {k} | {v['model']} | {v['batch']} | {v['text_lengths']} | {v['samples_per_s']} | "
                f"{v['step_ms']} ms | {pct(v.get('mfu'))} | {pct(v.get('mfu_executed'))} | "
                f"{v.get('kernels_per_step', 'n/a')} | {pct(v.get('gpu_busy_share_profiled'))} | {mem} |"
            )
    r = report["results"]
    if r:
        lines += [
            "",
            f"End to end: {s['model']} random init, {report['image_size']} px, batch {s['batch']}, {s['workers']} workers, "
            f"{s['precision']}, {s['steps']} timed steps after {s['warmup_steps']}, log every {s['log_every']}; "
            f"per configuration the mean of its {s['rounds']} windows (runs alternated)",
            "",
            "| configuration | samples/s (windows) | data wait | GPU busy (nvidia-smi) | peak GPU memory | MFU (model) "
            "| MFU (executed) | compile | first step | wall |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for k, v in r.items():
            mem = f"{v['peak_gpu_mem_mib'] / 1024:.1f} GiB" if v.get("peak_gpu_mem_mib") is not None else "n/a"
            comp = f"{v['compile_seconds']} s" if v.get("compile_seconds") else "n/a"
            lines.append(
                f"| {k} | {v['samples_per_s']} ({', '.join(str(x) for x in v['windows'])}) | "
                f"{pct(v['data_wait_share'])} | {pct(v.get('gpu_busy_share'))} | {mem} | {pct(v.get('mfu'))} | "
                f"{pct(v.get('mfu_executed'))} | {comp} | {v['time_to_first_step_s']} s | {v['wall_s']} s |"
            )
        if report.get("ratio"):
            q = report["ratio"]
            lines.append(
                f"| **ratio {q['kubeclip']} / {q['peer']} (each trainer's best)** | **{q['value']:.2f}** "
                "| | | | | | | | |"
            )
    if report.get("decode"):
        lines += [
            "",
            f"kubeclip's GPU decode alone (nvJPEG + crop/resize + normalise, one process): "
            f"{report['decode']['images_per_s']} images/s",
        ]
    if report.get("skipped"):
        lines += ["", "Not run (time budget): " + ", ".join(report["skipped"])]
    return "\n".join(lines)


def run_order(configs: list[str], rounds: int) -> list[tuple[str, int]]:
    """(configuration, round index from 0) in the order they run: the configurations in order, reversed
    every other round, so no configuration always runs first on a card that warms up over the bench."""
    return [(who, rnd) for rnd in range(rounds) for who in (configs if rnd % 2 == 0 else configs[::-1])]


def aggregate(runs: list[dict]) -> dict:
    """One configuration's windows: means of the figures, every window's samples/s kept."""
    out = dict(runs[-1])
    out["windows"] = [x["samples_per_s"] for x in runs]
    for key in ("samples_per_s", "data_wait_share", "gpu_busy_share", "peak_gpu_mem_mib", "wall_s"):
        vals = [x[key] for x in runs if isinstance(x.get(key), (int, float))]
        out[key] = round(statistics.fmean(vals), 4 if "share" in key else 1) if vals else None
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model name or local-dir:PATH (random init)")
    ap.add_argument("--batch", type=int, default=256, help="batch per GPU")
    ap.add_argument("--workers", type=int, default=12, help="data-loader workers (both trainers)")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per end-to-end run")
    ap.add_argument("--warmup-steps", type=int, default=30, help="steps run before the timed window")
    ap.add_argument("--log-every", type=int, default=10, help="log interval of both trainers (window edges)")
    ap.add_argument("--rounds", type=int, default=2, help="windows per configuration (runs alternate)")
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"end-to-end configurations, in order (of {', '.join(CONFIGS)})"
    )
    ap.add_argument(
        "--budget-s", type=float, default=0, help="start no end-to-end run after this many seconds (0: none)"
    )
    ap.add_argument("--n", type=int, default=0, help="images (default: max(20000, (warmup + steps + 1) x batch))")
    ap.add_argument("--size", type=int, default=256, help="side of the generated JPEGs")
    ap.add_argument("--precision", default="amp_bf16")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-warmup", type=int, default=10, help="learning-rate warmup steps")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the pipeline without a GPU (tests)")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the card's peak dense bf16 TFLOP/s (default: by name)"
    )
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True, help="the step profile (3.)")
    ap.add_argument("--profile-warmup", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--profile-trace-steps", type=int, default=3, help="steps under the profiler (CUDA only)")
    ap.add_argument(
        "--profile-compile", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA only"
    )
    ap.add_argument("--large-model", default="ViT-L-14", help="the step profile's large row ('' to skip)")
    ap.add_argument("--large-batch", type=int, default=128)
    ap.add_argument("--large-compile", action="store_true", help="also the compiled large row")
    ap.add_argument(
        "--decode-batches",
        type=int,
        default=20,
        help="on CUDA, also time kubeclip's GPU decode alone over this many batches (0: skip)",
    )
    ap.add_argument("--decode-on-cpu", action="store_true", help="time the decode path on CPU too (tests)")
    ap.add_argument("--wheels", type=Path, default=None, help="install the peer offline from the wheels in this folder")
    ap.add_argument(
        "--run-timeout", type=float, default=0, help="kill a trainer run after this many seconds (0: never)"
    )
    ap.add_argument("--work", type=Path, default=CACHE / "gpu", help="data, peer venv and run folders")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-gpu", help="where the results go")
    a = ap.parse_args(argv)
    check_window(a)
    configs = [c for c in a.configs.split(",") if c]
    if unknown := [c for c in configs if c not in (*CONFIGS, "kubeclip_pil")]:
        raise SystemExit(f"[bench] unknown --configs {unknown}")

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("[bench] no CUDA device here (use --device cpu to run the pipeline on the CPU)")
    device_name = (
        torch.cuda.get_device_name(0)
        if a.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    started = time.time()
    a.n = a.n or max(20000, (a.warmup_steps + a.steps + 1) * a.batch)
    a.work = a.work.resolve()  # the runs start in their own folders
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    peer = peer_env.ensure(a.work / "peer", a.wheels) if any(c.startswith("open_clip") for c in configs) else None
    print(f"[bench] peer ready ({time.time() - t0:.1f} s)", file=sys.stderr)
    t0 = time.time()
    csv = dataset.make(a.work / f"data-{a.n}-{a.size}", a.n, a.size)["train"]
    print(f"[bench] {a.n} images of {a.size} px ready ({time.time() - t0:.1f} s)", file=sys.stderr)
    import open_clip

    size = (
        open_clip.get_model_config(a.model)["vision_cfg"]["image_size"]
        if not a.model.startswith("local-dir:")
        else json.loads((Path(a.model[10:]) / "open_clip_config.json").read_text())
        .get("model_cfg", {})
        .get("vision_cfg", {})
        .get("image_size")
    )
    lengths = text_lengths(csv, a.model, a.batch)
    flops = flops_per_sample(a.model, a.device)
    flops_exec = executed_flops(a.model, a.device, lengths)
    peak = a.peak_tflops or (peak_tflops(device_name) if a.device == "cuda" else None)
    report: dict = {
        "device": device_name,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": os.environ.get("KUBECLIP_COMMIT", ""),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "image_size": size,
        "flops_per_sample": flops,
        "executed_flops_per_sample": flops_exec,
        "text_lengths": sorted(set(lengths)),
        "peak_tflops": peak,
        "profile": {},
        "results": {},
        "runs": [],
        "failed": [],
        "skipped": [],
    }

    def save() -> None:
        (a.out / "bench_gpu.json").write_text(json.dumps(report, indent=1))

    def mfu(sps: float, per_sample: float):
        return round(sps * per_sample / (peak * 1e12), 6) if peak else None

    save()
    if a.profile:
        compile_too = a.profile_compile if a.profile_compile is not None else a.device == "cuda"
        variants = [
            ("eager_full_text", False, False, False),  # truncation off
            ("eager_loss_read_every_step", True, False, True),  # the host sync back
            ("eager", True, False, False),
        ]
        if compile_too:
            variants.append(("compiled", True, True, False))
        rows = [(a.model, a.batch, variants)]
        if a.large_model:
            large = [
                (f"large_{n}", t, c, y)
                for n, t, c, y in variants
                if n in ("eager", "compiled") and (a.large_compile or not c)
            ]
            rows.append((a.large_model, a.large_batch, large))
        for model, batch, vs in rows:
            try:
                prof = step_profile(csv, a, model, batch, vs, a.device)
                per = {n: flops_per_sample(model, a.device, n) for v in prof.values() for n in v["text_lengths"]}
                full = flops if model == a.model else flops_per_sample(model, a.device)
                for v in prof.values():
                    v["mfu"] = mfu(v["samples_per_s"], full)
                    v["mfu_executed"] = mfu(v["samples_per_s"], statistics.fmean(per[n] for n in v["text_lengths"]))
                report["profile"].update(prof)
            except (Exception, SystemExit) as e:  # a failure here must not lose the rest
                report["failed"].append(
                    f"step profile {model}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                )
            save()

    by_config: dict[str, list] = {}
    for who, rnd in run_order(configs, a.rounds):
        if a.budget_s and time.time() - started > a.budget_s:
            report["skipped"].append(f"{who} (round {rnd + 1})")
            continue
        try:  # one run failing still measures the others
            if who.startswith("open_clip_train"):
                res = run_peer(peer, a.work, csv, a, a.device, who, compiled=who.endswith("_compile"))
            else:
                res = run_kubeclip(
                    a.work,
                    csv,
                    a,
                    a.device,
                    who,
                    compiled=who.endswith("_compile"),
                    gpu_decode=who != "kubeclip_pil",
                )
        except SystemExit as e:
            print(str(e), file=sys.stderr)
            report["failed"].append(f"{who} round {rnd + 1}: {str(e).splitlines()[0]}")
            save()
            continue
        res.update(config=who, round=rnd + 1)
        report["runs"].append(res)
        by_config.setdefault(who, []).append(res)
        print(f"[bench] {who} round {rnd + 1}: {json.dumps(res)}", file=sys.stderr)
        save()
    for who in configs:
        if who in by_config:
            agg = aggregate(by_config[who])
            agg["mfu"] = mfu(agg["samples_per_s"], flops)
            if who.startswith("kubeclip"):
                agg["mfu_executed"] = mfu(agg["samples_per_s"], flops_exec if agg.get("text_truncation") else flops)
            report["results"][who] = agg
    peers = {k: v for k, v in report["results"].items() if k.startswith("open_clip")}
    ours = {k: v for k, v in report["results"].items() if k.startswith("kubeclip")}
    if peers and ours:
        best_peer = max(peers, key=lambda k: peers[k]["samples_per_s"])
        best_ours = max(ours, key=lambda k: ours[k]["samples_per_s"])
        report["ratio"] = {
            "kubeclip": best_ours,
            "peer": best_peer,
            "value": round(ours[best_ours]["samples_per_s"] / peers[best_peer]["samples_per_s"], 3),
        }
    if a.decode_batches and (a.device == "cuda" or a.decode_on_cpu):
        try:  # a failure here must not lose the trainers' figures
            report["decode"] = decode_throughput(csv, a.model, a.batch, a.decode_batches, a.device)
            print(f"[bench] decode alone: {json.dumps(report['decode'])}", file=sys.stderr)
        except Exception as e:
            report["failed"].append(f"decode timing: {type(e).__name__}: {e}")
    md = table(report)
    save()
    (a.out / "bench_gpu.md").write_text(md + "\n")
    print(md)
    if report["failed"]:
        raise SystemExit("[bench] failed: " + "; ".join(report["failed"]))


if __name__ == "__main__":
    main()
