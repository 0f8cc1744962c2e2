"""``hack/bench_gpu.py`` end to end on the CPU: a tiny model, a few images, 2 timed steps, both trainers.

The GPU figures themselves come from running it on a GPU (BENCHMARKS.md); this checks that the
script runs unchanged from a checkout: dataset generation, the peer's pinned venv (created on
first use under ``$KUBECLIP_BENCH_CACHE``; that first run needs the package index), the step
profile of kubeclip's own step, open_clip_train and kubeclip one round each (their alternation
over rounds and the mean of the windows: tests/unit/test_bench_harness.py), the peer's
loader waits timed through ``hack/peer/oc_train.py``, the FLOP counts (model and executed), the MFU
arithmetic and the result files. The card-name table is checked without a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Some Other GPU", None),
    ],
)
def test_peak_flops_by_card_name(name, tflops):
    from hack import bench_gpu

    assert bench_gpu.peak_tflops(name) == tflops


@pytest.mark.slow
def test_bench_gpu_runs_on_cpu_with_a_tiny_model(tmp_path):
    out = tmp_path / "out"
    work = Path(os.environ.get("KUBECLIP_BENCH_CACHE", Path.home() / ".cache" / "kubeclip" / "bench")) / "test"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "hack.bench_gpu",
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
        "--log-every",
        "1",
        "--rounds",
        "1",  # the alternation over rounds and the mean of windows: test_bench_harness.py, without runs
        "--configs",
        "open_clip_train,kubeclip",
        "--profile-warmup",
        "1",
        "--profile-steps",
        "2",
        "--large-model",
        "",
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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "bench_gpu.json").read_text())
    assert set(report["results"]) == {"open_clip_train", "kubeclip"}
    assert [(r["config"], r["round"]) for r in report["runs"]] == [("open_clip_train", 1), ("kubeclip", 1)]
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
    # the generated captions are short: kubeclip cuts the 32-token context to 16, a third fewer text FLOPs
    assert report["text_lengths"] == [16]
    assert 0.5 * flops < report["executed_flops_per_sample"] < flops
    for who, r in report["results"].items():
        assert len(r["windows"]) == 1
        assert r["samples_per_s"] == pytest.approx(r["windows"][0], abs=0.2)
        assert r["samples_per_s"] > 0, (who, r)
        assert 0 <= r["data_wait_share"] < 1, (who, r)
        assert r["mfu"] == pytest.approx(r["samples_per_s"] * flops / 1e12, abs=2e-6)
        assert r["time_to_first_step_s"]
        assert r["wall_s"] >= r["time_to_first_step_s"]
    k = report["results"]["kubeclip"]
    assert k["text_truncation"]
    assert k["mfu_executed"] < k["mfu"]
    prof = report["profile"]
    assert set(prof) == {"eager_full_text", "eager_loss_read_every_step", "eager"}, prof
    assert prof["eager_full_text"]["text_lengths"] == [32]
    assert prof["eager"]["text_lengths"] == [16]
    assert all(v["samples_per_s"] > 0 and v["mfu"] > 0 for v in prof.values()), prof
    assert report["ratio"]["peer"] == "open_clip_train"
    assert report["ratio"]["kubeclip"] == "kubeclip"
    assert report["failed"] == []
    assert report["decode"]["images_per_s"] > 0
    assert report["decode"]["batches_timed"] == 2
    md = (out / "bench_gpu.md").read_text()
    assert "| open_clip_train |" in md
    assert "| kubeclip |" in md
    assert "ratio kubeclip / open_clip_train" in md
    assert "| eager_full_text |" in md
    assert "(each trainer's best)" in md
    assert md.strip() in proc.stdout
