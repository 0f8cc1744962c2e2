#!/usr/bin/env python3
"""kubeclip's trainer vs open_clip_train 3.3.0, side by side, on the same data, model and settings.

What ``make bench`` runs for the trainer. Both trainers get the same generated dataset (the
peer's ``make_dataset.py``), the same tiny OpenCLIP config (``local-dir:`` the peer's
``tiny_model``), batch size, workers, epochs, learning rate, warmup, weight decay, AdamW betas/eps, seed and fp32
on CPU. Runs
alternate (peer, kubeclip, peer, kubeclip, ...) so drifting machine load hits both alike.

Measured from outside, the same way for both (``../shared/peer/openclip/run_measured.py`` wraps
each run):
  * time to first step: from process start until the first step's log line appears (polled
    every 20 ms): open_clip_train's first "Train Epoch" line, kubeclip's "step 1/" line;
  * steady-state samples/s: per-step wall times (data wait included), first step of each epoch
    excluded — open_clip_train's from its per-step log (the peer's ``summarize_oc_log.py``),
    kubeclip's from ``final/metrics.json`` (computed the same way);
  * peak RSS of the largest single process, and peak PSS of the whole process tree;
  * CPU seconds of the whole process tree (robust to other load on a shared machine);
  * final validation loss (contrastive, per batch of the training batch size) of each.

The peer needs its own virtualenv with ``open_clip_torch[training]==3.3.0`` (transformers,
webdataset...: kept out of the project's env so they never slow kubeclip's imports). It is made at
``$KUBECLIP_PEER_VENV`` (default ``.cache/peer-venv``) on first use and reuses torch from the
project's venv through a ``.pth`` file instead of downloading it again.

    python hack/bench_trainer.py [--repeat 3] [--skip-ddp] [--n 512 --epochs 2 --batch 32 --workers 2]

Prints one ``trainer_bench <mode>: ...`` line per mode (1 process, 2 processes) with the ratios
kubeclip / open_clip_train, and writes every run's figures to ``runs/bench-trainer/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER = Path(os.environ.get("KUBECLIP_PEER_DIR", REPO.parent / "shared" / "peer" / "openclip"))
PEER_VENV = Path(os.environ.get("KUBECLIP_PEER_VENV", REPO / ".cache" / "peer-venv"))
PY = sys.executable


def ensure_peer_venv() -> Path:
    py = PEER_VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import open_clip_train.main"], capture_output=True).returncode == 0:
        return py
    print(f"[bench] creating the peer venv {PEER_VENV} (open_clip_torch[training]==3.3.0)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "kubeclip-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # reuse our torch
    subprocess.run([PEER_VENV / "bin" / "pip", "install", "-q", "open_clip_torch[training]==3.3.0"], check=True)
    return py


def measured(cmd: list, cwd: Path, name: str, marker: str, marker_file: Path, env: dict) -> dict:
    """Run ``cmd`` under run_measured.py; return its measurements plus time to first step."""
    out_json = cwd / f"{name}.measure.json"
    log = open(cwd / f"{name}.console.log", "w")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.Popen([PY, str(PEER / "run_measured.py"), str(out_json), "--", *map(str, cmd)],
                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    first = None
    while proc.poll() is None:
        if first is None and marker_file.exists():
            try:
                if marker in marker_file.read_text(errors="replace"):
                    first = time.time() - t0
            except OSError:
                pass
        time.sleep(0.02)
    log.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (cwd / f"{name}.console.log").read_text(errors="replace").splitlines()[-20:]
        raise SystemExit(f"[bench] {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    res = json.loads(out_json.read_text())
    res["time_to_first_step_s"] = round(first, 2) if first is not None else None
    # CPU seconds of the whole process tree (every rank and loader worker is waited for): far
    # less sensitive to other load on the machine than wall-clock figures
    res["cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)
    return res


def run_peer(peer_py: Path, work: Path, data: Path, a, name: str, ddp: bool) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    args = ["--train-data", data / "train.csv", "--val-data", data / "val.csv", "--dataset-type", "csv",
            "--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "caption",
            "--model", f"local-dir:{PEER / 'tiny_model'}", "--epochs", a.epochs, "--batch-size", a.batch,
            "--workers", a.workers, "--precision", "fp32", "--device", "cpu", "--lr", a.lr, "--warmup", a.warmup,
            "--seed", 0, "--log-every-n-steps", 1, "--name", name,
            # the optimizer kubeclip uses (CLIP's ViT values); open_clip_train picks them only when
            # the model name contains "vit", which "local-dir:..." does not
            "--wd", a.wd, "--beta1", 0.9, "--beta2", 0.98, "--eps", 1e-6]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if ddp:  # open_clip_train 3.3.0 passes device_ids for a CPU module: its CPU DDP needs the fix
        env["OCB_CPU_DDP_FIX"] = "1"
        cmd = [peer_py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2, PEER / "oc_train.py", *args,
               "--dist-backend", "gloo"]
    else:
        cmd = [peer_py, "-m", "open_clip_train.main", *args]
    res = measured(cmd, run, name, "Train Epoch: 0 [", run / "logs" / name / "out.log", env)
    summ = subprocess.run([peer_py, PEER / "summarize_oc_log.py", run / "logs" / name, run / f"{name}.measure.json"],
                          capture_output=True, text=True, check=True)
    s = json.loads(summ.stdout)
    res.update(samples_per_s=s["samples_per_s_steady"], val_loss=s.get("final_val_clip_loss"))
    return res


def run_ours(work: Path, data: Path, a, name: str, ddp: bool) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    manifest = run / "job.yaml"
    manifest.write_text(json.dumps({
        "apiVersion": "kubeclip.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "model": {"name": f"local-dir:{PEER / 'tiny_model'}"},
            "dataset": {"trainCsv": str(data / "train.csv"), "valCsv": str(data / "val.csv"), "separator": ","},
            "training": {"epochs": a.epochs, "batchSize": a.batch, "learningRate": a.lr, "warmupSteps": a.warmup, "weightDecay": a.wd,
                         "workers": a.workers, "precision": "fp32", "seed": 0, "checkpointEverySteps": 0,
                         "logEverySteps": 1},
            "output": {"path": str(run / "out")},
            "metrics": {"port": 0},
        }}))
    if ddp:
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2, "-m", "trainer", manifest]
    else:
        cmd = [PY, "-m", "trainer", manifest]
    res = measured(cmd, REPO, name, "step 1/", REPO / f"{name}.console.log", dict(os.environ))
    shutil.move(str(REPO / f"{name}.console.log"), run / f"{name}.console.log")
    shutil.move(str(REPO / f"{name}.measure.json"), run / f"{name}.measure.json")
    m = json.loads((run / "out" / "final" / "metrics.json").read_text())
    res.update(samples_per_s=m["samples_per_second"], val_loss=round(m["val_loss"], 4))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--wd", type=float, default=0.2, help="weight decay (open_clip_train's default)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per side; medians are reported")
    ap.add_argument("--skip-ddp", action="store_true", help="skip the 2-process gloo DDP comparison")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench-trainer"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    peer_py = ensure_peer_venv()
    data = work / "data"
    subprocess.run([PY, PEER / "make_dataset.py", "--n", str(a.n), "--size", str(a.size), "--out", data],
                   check=True, stdout=subprocess.DEVNULL)
    modes = [("single", False)] + ([] if a.skip_ddp else [("ddp2", True)])
    report = {"settings": vars(a), "python": sys.version.split()[0], "cpus": os.cpu_count(), "runs": {}}
    for mode, ddp in modes:
        peer, ours = [], []
        for i in range(a.repeat):
            peer.append(run_peer(peer_py, work, data, a, f"peer-{mode}-{i}", ddp))
            print(f"[bench] peer {mode} #{i}: {json.dumps({k: peer[-1][k] for k in ('samples_per_s', 'time_to_first_step_s', 'max_single_proc_rss_mb', 'val_loss', 'wall_s', 'cpu_s')})}", file=sys.stderr)
            ours.append(run_ours(work, data, a, f"kubeclip-{mode}-{i}", ddp))
            print(f"[bench] kubeclip {mode} #{i}: {json.dumps({k: ours[-1][k] for k in ('samples_per_s', 'time_to_first_step_s', 'max_single_proc_rss_mb', 'val_loss', 'wall_s', 'cpu_s')})}", file=sys.stderr)

        def med(runs, key):
            vals = [r[key] for r in runs if r.get(key) is not None]
            return round(statistics.median(vals), 3) if vals else None

        row = {}
        for key in ("samples_per_s", "time_to_first_step_s", "max_single_proc_rss_mb", "peak_tree_pss_mb", "val_loss", "wall_s", "cpu_s"):
            row[key] = {"kubeclip": med(ours, key), "open_clip_train": med(peer, key)}
        row["ratios"] = {
            "samples_per_s": round(row["samples_per_s"]["kubeclip"] / row["samples_per_s"]["open_clip_train"], 2),
            "time_to_first_step": round(row["time_to_first_step_s"]["kubeclip"] / row["time_to_first_step_s"]["open_clip_train"], 2),
            "peak_rss": round(row["max_single_proc_rss_mb"]["kubeclip"] / row["max_single_proc_rss_mb"]["open_clip_train"], 2),
            "cpu_seconds": round(row["cpu_s"]["kubeclip"] / row["cpu_s"]["open_clip_train"], 2),
        }
        row["all_runs"] = {"kubeclip": ours, "open_clip_train": peer}
        report["runs"][mode] = row
        r = row["ratios"]
        print(f"trainer_bench {mode}: samples/s ratio {r['samples_per_s']} "
              f"({row['samples_per_s']['kubeclip']} vs {row['samples_per_s']['open_clip_train']}), "
              f"time-to-first-step ratio {r['time_to_first_step']} "
              f"({row['time_to_first_step_s']['kubeclip']} s vs {row['time_to_first_step_s']['open_clip_train']} s), "
              f"peak RSS ratio {r['peak_rss']} ({row['max_single_proc_rss_mb']['kubeclip']} MB vs "
              f"{row['max_single_proc_rss_mb']['open_clip_train']} MB), CPU-seconds ratio {r['cpu_seconds']} "
              f"({row['cpu_s']['kubeclip']} vs {row['cpu_s']['open_clip_train']}), val loss kubeclip "
              f"{row['val_loss']['kubeclip']} vs open_clip_train {row['val_loss']['open_clip_train']}")
    (work / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"[bench] details: {work / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
