"""Every precision the CPU can run, end to end; the ones it cannot, refused with one line.

Real processes (``python -m trainer``, a tiny OpenCLIP model, PNGs on disk). The ``bf16`` run
holds the model in bf16 and goes through everything that touches weights or images: training,
the baseline and epoch evals on val and retention, zero-shot, the WiSE-FT sweep with a fixed
alpha 0.5 exported, the export loaded back by open_clip. Before trainer/precision.py the first
eval crashed (``Input type (float) and bias type (c10::BFloat16) should be the same``). The same
run has ``spec.output.tensorboard: true``; its event files are read back with TensorBoard's own
reader. The fp16/amp modes need a GPU (``hack/gpu_precisions.py`` runs all of them there).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from trainer_helpers import VENV_BIN, dataset, env, manifest

from hack import forgetting_demo

pytestmark = pytest.mark.slow

R1 = "image_to_text_R@1"
EPOCHS, STEPS_PER_EPOCH = 2, 6  # 96 rows / batch 16


def job(root, precision: str, **spec) -> object:
    path = manifest(
        root,
        f"prec-{precision}",
        root / "out",
        training={"precision": precision, "epochs": EPOCHS, "batchSize": 16, "workers": 0, "checkpointEverySteps": 0},
        nproc=1,
    )
    doc = yaml.safe_load(path.read_text())
    for key, value in spec.items():
        doc["spec"][key] = {**doc["spec"].get(key, {}), **value}
    path.write_text(yaml.safe_dump(doc))
    return path


def cpu_env() -> dict:
    e = env()
    e["CUDA_VISIBLE_DEVICES"] = ""  # the refusals are about a machine without a GPU
    return e


def trainer(path, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", str(path)], capture_output=True, text=True, env=cpu_env(), timeout=timeout
    )


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    _, val = dataset(root)
    path = job(
        root,
        "bf16",
        evaluation={"retentionCsv": str(val), "zeroShot": {"csv": str(forgetting_demo.zeroshot_csv(val))}},
        export={"wiseFtAlphas": [0.5], "select": "alpha", "alpha": 0.5},
        output={"tensorboard": True},
    )
    proc = trainer(path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"out": root / "out", "log": proc.stderr}


def test_pure_bf16_trains_evaluates_and_sweeps(bf16):
    m = json.loads((bf16["out"] / "final" / "metrics.json").read_text())
    assert m["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert [e["alpha"] for e in m["wiseft"]] == [0.0, 0.5, 1.0]
    for e in m["wiseft"]:  # val, retention and zero-shot measured for every mix
        assert 0.0 <= e["val"][R1] <= 1.0
        assert 0.0 <= e["retention"][R1] <= 1.0
        assert 0.0 <= e["zeroshot"]["top1"] <= 1.0
        assert e["zeroshot"]["samples"] == 32
    assert m["exported_alpha"] == 0.5
    assert "precision bf16" in bf16["log"]


def test_pure_bf16_checkpoint_holds_bf16_weights(bf16):
    import torch

    from trainer.checkpoint import latest, load

    state = load(latest(str(bf16["out"])))
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert floats
    assert all(v.dtype == torch.bfloat16 for v in floats)


def test_pure_bf16_export_loads_in_open_clip_and_is_the_evaluated_mix(bf16):
    import open_clip
    import torch
    from safetensors.torch import load_file

    final = bf16["out"] / "final"
    weights = load_file(str(final / "open_clip_model.safetensors"))
    # the exported alpha-0.5 mix is the one the bf16 model evaluated: every value is a bf16 value
    for k, v in weights.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32
            assert torch.equal(v.to(torch.bfloat16).float(), v), k
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{final}")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    with torch.no_grad():
        feats = model.encode_image(torch.rand(2, 3, 32, 32), normalize=True)
    assert feats.shape == (2, 64)
    assert torch.isfinite(feats).all()


def test_tensorboard_event_files_hold_the_runs_scalars(bf16):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m = json.loads((bf16["out"] / "final" / "metrics.json").read_text())
    acc = EventAccumulator(str(bf16["out"] / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_second", f"val/{R1}", "val/val_loss"} <= tags
    assert {f"retention/{R1}", "zeroshot/top1", "zeroshot/top5", f"baseline/val/{R1}", "baseline/zeroshot/top1"} <= tags
    loss = acc.Scalars("train/loss")
    assert loss[0].step == 1
    assert loss[-1].step == EPOCHS * STEPS_PER_EPOCH
    assert loss[-1].value == pytest.approx(m["train_loss"], rel=1e-6)
    assert all(0 < e.value <= 1e-3 for e in acc.Scalars("train/lr"))
    # one eval per epoch end, at the step it ran; the last one is the run's final val figure
    val = acc.Scalars(f"val/{R1}")
    assert [e.step for e in val] == [STEPS_PER_EPOCH * (i + 1) for i in range(EPOCHS)]
    assert val[-1].value == pytest.approx(m["wiseft"][-1]["val"][R1], abs=1e-6)
    assert acc.Scalars(f"baseline/val/{R1}")[0].step == 0
    assert acc.Scalars(f"baseline/val/{R1}")[0].value == pytest.approx(m["baseline"]["val"][R1], abs=1e-6)
    assert acc.Scalars("zeroshot/top1")[-1].value == pytest.approx(m["wiseft"][-1]["zeroshot"]["top1"], abs=1e-6)


def test_amp_bf16_on_cpu_runs_end_to_end(tmp_path):
    proc = trainer(job(tmp_path, "amp_bf16"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((tmp_path / "out" / "final" / "metrics.json").read_text())
    assert m["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert 0.0 <= m[R1] <= 1.0
    assert "autocast bf16" in proc.stderr


@pytest.mark.parametrize("precision", ["fp16", "amp", "amp_fp16"])
def test_a_precision_the_cpu_cannot_run_is_refused_with_one_line(tmp_path, precision):
    path = job(tmp_path, precision)
    proc = trainer(path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = f"config: spec.training.precision {precision}: needs a CUDA GPU"
    assert [x for x in proc.stderr.splitlines() if x.startswith("config:")] == [
        x for x in proc.stderr.splitlines() if line in x
    ]
    assert line in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
    run = subprocess.run(
        [str(VENV_BIN / "kubeclip"), "run", "--quiet", str(path)],
        capture_output=True,
        text=True,
        env=cpu_env(),
        timeout=300,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert line in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
