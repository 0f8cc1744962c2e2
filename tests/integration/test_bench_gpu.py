"""``hack/bench_gpu.py`` end to end on the CPU: a tiny model, a few images, 2 timed steps, both trainers.

The GPU figures themselves come from running it on a GPU (BENCHMARKS.md); this checks that the
script runs unchanged from a checkout: dataset generation, the peer's pinned venv (created on
first use under ``$KUBECLIP_BENCH_CACHE``; that first run needs the package index), open_clip_train
and kubeclip side by side, the FLOP count, the MFU arithmetic and the result files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_bench_gpu_runs_on_cpu_with_a_tiny_model(tmp_path):
    out = tmp_path / "out"
    work = Path(os.environ.get("KUBECLIP_BENCH_CACHE", Path.home() / ".cache" / "kubeclip" / "bench")) / "test"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        str(REPO / "hack" / "bench_gpu.py"),
        "--device",
        "cpu",
        "--model",
        f"local-dir:{REPO / 'hack' / 'peer' / 'tiny_model'}",
        "--batch",
        "4",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--n",
        "16",
        "--size",
        "64",
        "--workers",
        "1",
        "--precision",
        "fp32",
        "--peak-tflops",
        "1",
        "--decode-batches",
        "3",
        "--decode-on-cpu",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    assert set(report["results"]) == {"open_clip_train", "kubeclip"}
    flops = report["flops_per_sample"]
    # analytic cross-check: forward + backward = 6 FLOPs per matrix weight per token (17 image
    # tokens, 32 text tokens); embeddings are lookups. The counter also sees attention, and the
    # patch conv (16 patches) and output projections (1 token) see fewer tokens: within 20 %.
    import open_clip

    model = open_clip.create_model(f"local-dir:{REPO / 'hack' / 'peer' / 'tiny_model'}")
    weights = {
        tower: sum(
            p.numel()
            for n, p in model.named_parameters()
            if p.ndim >= 2 and "embedding" not in n and n.startswith("visual") == (tower == "image")
        )
        for tower in ("image", "text")
    }
    analytic = 6 * (weights["image"] * 17 + weights["text"] * 32)
    assert 0.8 * analytic < flops < 1.2 * analytic, (flops, analytic)
    for who, r in report["results"].items():
        assert r["samples_per_s"] > 0 and 0 <= r["data_wait_share"] < 1, (who, r)
        assert r["mfu"] == pytest.approx(r["samples_per_s"] * flops / 1e12, abs=2e-6)
        assert r["time_to_first_step_s"] and r["wall_s"] >= r["time_to_first_step_s"]
    assert report["failed"] == [] and report["decode"]["images_per_s"] > 0 and report["decode"]["batches_timed"] == 2
    md = (out / "bench_gpu.md").read_text()
    assert "| open_clip_train |" in md and "| kubeclip |" in md and "ratio kubeclip / open_clip_train" in md
    assert md.strip() in proc.stdout
