#!/usr/bin/env python3
"""kubeclip's trainer vs open_clip_train 3.3.0, side by side, on the same data, model and settings.

What ``make bench`` runs for the trainer. Both trainers get the same generated dataset
(``hack/peer/dataset.py``), the same tiny OpenCLIP config (``local-dir:hack/peer/tiny_model``, 7.3 M
parameters), batch size, workers, epochs, learning rate, warmup, weight decay, AdamW betas/eps,
seed and fp32 on CPU. Runs alternate (peer, kubeclip, peer, kubeclip, ...) so drifting machine load
hits both alike. Everything it needs is in this repository (``hack/peer/``).

Measured from outside, the same way for both (``hack/peer/measure.py`` runs each):
  * time to first step: from process start until the first step's log line appears (polled
    every 20 ms): open_clip_train's first "Train Epoch" line, kubeclip's "step 1/" line;
  * steady-state samples/s: per-step wall times (data wait included), first step of each epoch
    excluded — open_clip_train's from its per-step log (``hack/peer/oc_log.py``), kubeclip's
    from ``final/metrics.json`` (computed the same way);
  * peak RSS of the largest single process, and peak PSS of the whole process tree;
  * CPU seconds of the whole process tree (robust to other load on a shared machine);
  * final validation loss (contrastive, per batch of the training batch size) of each.

The peer runs in its own virtualenv with ``open_clip_torch[training]==3.3.0`` (transformers,
webdataset...: kept out of the project's env), made on first use under
``$KUBECLIP_BENCH_CACHE`` (default ``~/.cache/kubeclip/bench``) by ``hack/peer/peer_env.py``; it
reuses the project's torch instead of downloading it again (``--wheels DIR``: offline). Its
2-process runs go through ``hack/peer/oc_train.py`` with ``KUBECLIP_PEER_CPU_DDP_FIX=1``:
open_clip_train 3.3.0 passes ``device_ids`` to DDP for a CPU module and dies at start-up otherwise.

    python -m hack.bench_trainer [--repeat 3] [--skip-ddp] [--n 512 --epochs 2 --batch 32 --workers 2]

Prints one ``trainer_bench <mode>: ...`` line per mode (1 process, 2 processes) with the ratios
kubeclip / open_clip_train, and writes every run's figures to ``runs/bench-trainer/results.json``.

The data-scale row (``--data-scale-only`` runs just it, ``--skip-data-scale`` leaves it out):
the pod entrypoint ``python -m trainer.node`` with 2 ranks x ``--scale-workers`` loader workers
on a ``--scale-rows``-row CSV (default 1 M rows repeating 2,000 generated 32-px images, each
row its own caption) and on a 128-row CSV of the same images; measured up to 2 s after the
eighth step (then the tree is killed): peak PSS of the whole process tree (node process, ranks,
workers, preflight children) counting anonymous memory, the mapped row cache and shared-memory
batches (shared libraries left out: their PSS depends on every other torch process of the
machine), and time to first step. The figure is the big CSV's PSS minus the small one's,
beside the CSV's size on disk. The same runs with the trainer before the row table (commit
``BASELINE_REF``, extracted with ``git archive``; ``--baseline-repo DIR`` uses another checkout)
give the before/after figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from devkit.jobs import local_job
from devkit.paths import REPO
from devkit.ports import free_port
from hack.peer import dataset, measure, oc_log, peer_env

CACHE = Path(os.environ.get("KUBECLIP_BENCH_CACHE", Path.home() / ".cache" / "kubeclip" / "bench"))
TINY = REPO / "hack" / "peer" / "tiny_model"
PY = sys.executable
#: The last commit before the node-shared row table (trainer/rowtable.py): the data-scale row's
#: "today's code" figure.
BASELINE_REF = "d546a84"
SHOWN = ("samples_per_s", "time_to_first_step_s", "max_single_proc_rss_mb", "val_loss", "wall_s", "cpu_s")


def run_peer(peer: tuple, work: Path, data: dict, a, name: str, ddp: bool) -> dict:
    peer_py, env = peer
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    args = [
        *dataset.oc_csv_args(data["train"], data["val"]),
        "--model",
        f"local-dir:{TINY}",
        "--epochs",
        a.epochs,
        "--batch-size",
        a.batch,
        "--workers",
        a.workers,
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--lr",
        a.lr,
        "--warmup",
        a.warmup,
        "--seed",
        0,
        "--log-every-n-steps",
        1,
        "--name",
        name,
        # the optimizer kubeclip uses (CLIP's ViT values); open_clip_train picks them only when
        # the model name contains "vit", which "local-dir:..." does not
        "--wd",
        a.wd,
        "--beta1",
        0.9,
        "--beta2",
        0.98,
        "--eps",
        1e-6,
    ]
    if ddp:  # torchrun swallows --logs (a prefix of its --logs-specs): logs go to ./logs of the run folder
        env = dict(env, KUBECLIP_PEER_CPU_DDP_FIX="1")
        cmd = [
            peer_py,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            2,
            REPO / "hack" / "peer" / "oc_train.py",
            *args,
            "--dist-backend",
            "gloo",
        ]
    else:
        cmd = [peer_py, "-m", "open_clip_train.main", *args]
    out_log = run / "logs" / name / "out.log"
    res = measure.run(cmd, run, run / f"{name}.console.log", env=env, marker="Train Epoch: 0 [", marker_file=out_log)
    steps = oc_log.steps(out_log)
    world = int(oc_log.params(run / "logs" / name).get("world_size", 1))
    first = {}
    for i, st in enumerate(steps):  # steady state: each epoch's first step (loader start-up) left out
        first.setdefault(st["epoch"], i)
    steady = [st for i, st in enumerate(steps) if i not in first.values()]
    res.update(
        samples_per_s=round(a.batch * world * len(steady) / sum(st["step_s"] for st in steady), 1),
        val_loss=oc_log.final_val_loss(run / "logs" / name),
    )
    return res


def run_ours(work: Path, data: dict, a, name: str, ddp: bool) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    manifest = run / "job.yaml"
    doc = local_job(
        name,
        model=f"local-dir:{TINY}",
        train_csv=data["train"],
        val_csv=data["val"],
        dataset={"separator": ","},
        output=run / "out",
        training={
            "epochs": a.epochs,
            "batchSize": a.batch,
            "learningRate": a.lr,
            "warmupSteps": a.warmup,
            "weightDecay": a.wd,
            "workers": a.workers,
            "checkpointEverySteps": 0,
            "logEverySteps": 1,
        },
    )
    manifest.write_text(json.dumps(doc))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = (
        [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2, "-m", "trainer", manifest]
        if ddp
        else [PY, "-m", "trainer", manifest]
    )
    res = measure.run(cmd, run, run / f"{name}.console.log", env=env, marker="step 1/")
    m = json.loads((run / "out" / "final" / "metrics.json").read_text())
    res.update(samples_per_s=m["samples_per_second"], val_loss=round(m["val_loss"], 4))
    return res


def scale_csvs(work: Path, rows: int) -> tuple[Path, Path]:
    """A ``rows``-row CSV and a 128-row one over the same 2,000 generated images."""
    import csv

    from trainer.sample_data import generate

    train, _ = generate(work / "scale-images", n=2000, val_n=32, size=32, seed=0)
    base_rows = list(csv.reader(train.read_text().splitlines()))[1:]
    out = {}
    for name, n in (("big", rows), ("small", 128)):
        path = work / "scale-images" / f"scale-{name}-{n}.csv"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(["filepath", "caption"])
                w.writerows((base_rows[i % 2000][0], f"{base_rows[i % 2000][1]}, sample {i}") for i in range(n))
            tmp.rename(path)
        out[name] = path
    return out["big"], out["small"]


def run_scale(work: Path, csv_path: Path, repo: Path, workers: int, name: str) -> dict:
    """The pod entrypoint on ``csv_path`` with the trainer of ``repo``; stopped 2 s after step 8."""
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    manifest = run / "job.yaml"
    doc = local_job(
        name,
        model=f"local-dir:{TINY}",
        train_csv=csv_path,
        dataset={"separator": ","},
        output=run / "out",
        training={"epochs": 1, "batchSize": 8, "workers": workers, "checkpointEverySteps": 0, "logEverySteps": 1},
        numProcPerNode=2,
    )
    manifest.write_text(json.dumps(doc))
    cache = run / "row-cache"  # cold: the row table is built inside the measured run
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PET_MASTER_PORT=str(free_port()),
        KUBECLIP_ROW_CACHE=str(cache),
        OMP_NUM_THREADS="1",
    )
    env.pop("KUBECLIP_PREFLIGHT_DONE", None)
    cmd = [PY, "-m", "trainer.node", manifest]
    res = measure.run(
        cmd,
        run,
        run / f"{name}.console.log",
        env=env,
        marker="step 1/",
        stop_marker="step 8/",  # every loader worker has delivered a batch by then
        stop_after_marker_s=2.0,
        # the mapped rows; loader batches in flight (a prefix to match, nothing is written there)
        anon_pss_also=(str(cache), "/dev/shm/", "/memfd:"),  # noqa: S108
    )
    if res["time_to_first_step_s"] is None:
        raise SystemExit(f"[bench] {name}: no first step; see {run / f'{name}.console.log'}")
    res["row_cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20, 1)
    shutil.rmtree(run / "out", ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return res


def baseline_tree(work: Path, ref: str) -> Path | None:
    """``trainer/`` and ``kubeclip/`` of commit ``ref`` extracted under ``work`` (``git archive``:
    nothing of this checkout changes); None when git or the commit is not there."""
    import subprocess
    import tarfile

    dest = work / f"baseline-{ref}"
    if (dest / "trainer" / "node.py").is_file():
        return dest
    try:
        raw = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref, "trainer", "kubeclip"],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        print(f"[bench] data-scale: no baseline (git archive {ref}: {err})", file=sys.stderr)
        return None
    import io

    tmp = work / f".baseline-{ref}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(dest)
    return dest


def data_scale(work: Path, a) -> dict:
    """The data-scale row: PSS growth (big CSV minus 128 rows) and time to first step, per trainer."""
    big, small = scale_csvs(work, a.scale_rows)
    csv_mb = round(big.stat().st_size / 2**20, 1)
    base = (
        Path(a.baseline_repo).resolve()
        if a.baseline_repo
        else (baseline_tree(work, a.baseline_ref) if a.baseline_ref else None)
    )
    trainers = [("kubeclip", REPO)] + ([("baseline", base)] if base else [])
    row: dict = {"rows": a.scale_rows, "csv_mb": csv_mb, "ranks": 2, "results": {}}
    for workers in a.scale_workers:
        for label, repo in trainers:
            r_small = run_scale(work, small, repo, workers, f"scale-{label}-w{workers}-small")
            r_big = run_scale(work, big, repo, workers, f"scale-{label}-w{workers}-big")
            growth = round(r_big["peak_tree_anon_pss_mb"] - r_small["peak_tree_anon_pss_mb"], 1)
            res = {
                "pss_growth_mb": growth,
                "pss_growth_over_csv": round(growth / csv_mb, 2),
                "time_to_first_step_s": r_big["time_to_first_step_s"],
                "time_to_first_step_small_s": r_small["time_to_first_step_s"],
                "peak_data_pss_mb": r_big["peak_tree_anon_pss_mb"],
                "peak_data_pss_small_mb": r_small["peak_tree_anon_pss_mb"],
                "whole_tree_pss_growth_mb": round(r_big["peak_tree_pss_mb"] - r_small["peak_tree_pss_mb"], 1),
                "row_cache_mb": r_big["row_cache_mb"],
            }
            row["results"][f"{label} x{workers} workers"] = res
            print(f"[bench] data-scale {label} {workers} workers: {json.dumps(res)}", file=sys.stderr)
    parts = [
        f"{k}: PSS growth {v['pss_growth_mb']} MB ({v['pss_growth_over_csv']}x the CSV), "
        f"first step {v['time_to_first_step_s']} s"
        for k, v in row["results"].items()
    ]
    print(f"trainer_bench data-scale ({a.scale_rows} rows, CSV {csv_mb} MB, 2 ranks): " + "; ".join(parts))
    return row


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
    ap.add_argument("--wheels", type=Path, default=None, help="install the peer offline from the wheels in this folder")
    ap.add_argument("--skip-data-scale", action="store_true", help="leave out the data-scale row")
    ap.add_argument("--data-scale-only", action="store_true", help="run only the data-scale row")
    ap.add_argument("--scale-rows", type=int, default=1_000_000)
    ap.add_argument("--scale-workers", type=lambda v: [int(x) for x in v.split(",")], default=[2])
    ap.add_argument(
        "--baseline-repo", default=None, help="run the data-scale row's baseline with this checkout's trainer"
    )
    ap.add_argument(
        "--baseline-ref",
        default=BASELINE_REF,
        help="else extract the trainer of this git commit for the baseline ('' for none; default: the last "
        "commit before the node-shared row table)",
    )
    a = ap.parse_args()
    work = Path(a.work).resolve()  # the runs start in their own folders
    work.mkdir(parents=True, exist_ok=True)
    if a.data_scale_only:
        row = data_scale(work, a)
        (work / "data-scale.json").write_text(json.dumps(row, indent=1))
        print(f"[bench] details: {work / 'data-scale.json'}", file=sys.stderr)
        return
    peer = peer_env.ensure(CACHE / "cpu-peer", a.wheels)
    data = dataset.make(work / "data", a.n, a.size, val_n=max(32, a.n // 8))
    modes = [("single", False)] + ([] if a.skip_ddp else [("ddp2", True)])
    report = {"settings": vars(a), "python": sys.version.split()[0], "cpus": os.cpu_count(), "runs": {}}
    for mode, ddp in modes:
        peers, ours = [], []
        for i in range(a.repeat):
            peers.append(run_peer(peer, work, data, a, f"peer-{mode}-{i}", ddp))
            print(f"[bench] peer {mode} #{i}: {json.dumps({k: peers[-1][k] for k in SHOWN})}", file=sys.stderr)
            ours.append(run_ours(work, data, a, f"kubeclip-{mode}-{i}", ddp))
            print(f"[bench] kubeclip {mode} #{i}: {json.dumps({k: ours[-1][k] for k in SHOWN})}", file=sys.stderr)

        def med(runs, key):
            vals = [r[key] for r in runs if r.get(key) is not None]
            return round(statistics.median(vals), 3) if vals else None

        row = {}
        for key in (
            "samples_per_s",
            "time_to_first_step_s",
            "max_single_proc_rss_mb",
            "peak_tree_pss_mb",
            "val_loss",
            "wall_s",
            "cpu_s",
        ):
            row[key] = {"kubeclip": med(ours, key), "open_clip_train": med(peers, key)}
        row["ratios"] = {
            "samples_per_s": round(row["samples_per_s"]["kubeclip"] / row["samples_per_s"]["open_clip_train"], 2),
            "time_to_first_step": round(
                row["time_to_first_step_s"]["kubeclip"] / row["time_to_first_step_s"]["open_clip_train"], 2
            ),
            "peak_rss": round(
                row["max_single_proc_rss_mb"]["kubeclip"] / row["max_single_proc_rss_mb"]["open_clip_train"], 2
            ),
            "cpu_seconds": round(row["cpu_s"]["kubeclip"] / row["cpu_s"]["open_clip_train"], 2),
        }
        row["all_runs"] = {"kubeclip": ours, "open_clip_train": peers}
        report["runs"][mode] = row
        r = row["ratios"]
        print(
            f"trainer_bench {mode}: samples/s ratio {r['samples_per_s']} "
            f"({row['samples_per_s']['kubeclip']} vs {row['samples_per_s']['open_clip_train']}), "
            f"time-to-first-step ratio {r['time_to_first_step']} "
            f"({row['time_to_first_step_s']['kubeclip']} s vs {row['time_to_first_step_s']['open_clip_train']} s), "
            f"peak RSS ratio {r['peak_rss']} ({row['max_single_proc_rss_mb']['kubeclip']} MB vs "
            f"{row['max_single_proc_rss_mb']['open_clip_train']} MB), CPU-seconds ratio {r['cpu_seconds']} "
            f"({row['cpu_s']['kubeclip']} vs {row['cpu_s']['open_clip_train']}), val loss kubeclip "
            f"{row['val_loss']['kubeclip']} vs open_clip_train {row['val_loss']['open_clip_train']}"
        )
    if not a.skip_data_scale:
        report["runs"]["data-scale"] = data_scale(work, a)
    (work / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"[bench] details: {work / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
