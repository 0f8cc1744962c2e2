"""Training options that change what is trained: pretrained weights, tower locking, grad checkpointing.

Real single-process runs (``python -m trainer``) of a tiny OpenCLIP model on a generated dataset.
The starting weights come from a ``spec.model.pretrained`` safetensors file the test writes, so it
can compare the exported ``final/`` weights with the exact weights training started from:

* ``lockImage``: every image-tower tensor ends bit-identical to the start, the text tower moved;
* ``lockImageUnlockedGroups`` / ``lockTextUnlockedLayers``: exactly the tensors of open_clip's last
  N layer groups of the locked tower change; more groups than the tower has exit 2 with one line;
* ``lockImageFreezeBnStats``: a locked ResNet tower's BatchNorm running statistics stay put (and
  move without it);
* ``gradCheckpointing``: recomputing activations in backward changes memory, not maths — the
  final weights match a run without it;
* ``gradAccumSteps``: k micro-batches of b rows train like one batch of k*b rows (open_clip's
  feature cache: the negatives span the accumulated batch).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from trainer_helpers import ONE_EPOCH, dataset, env

from devkit import jobs
from devkit.tiny_model import TINY_CONFIG, tiny_model

pytestmark = pytest.mark.slow


def start_weights(root, model_name: str):
    import open_clip

    torch.manual_seed(123)
    model = open_clip.create_model(model_name)
    path = root / "start.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return path, state


def train(root, name: str, model_name: str, pretrained, training: dict):
    proc = run(root, name, model_name, pretrained, training)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return load_file(str(root / name / "final" / "open_clip_model.safetensors"))


def run(
    root, name: str, model_name: str, pretrained, training: dict, extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    train_csv, val_csv = dataset(root)
    out = root / name
    doc = jobs.local_job(
        name,
        model=model_name,
        pretrained=pretrained,
        train_csv=train_csv,
        val_csv=val_csv,
        output=out,
        training={**ONE_EPOCH, **training},
    )
    job = jobs.write(doc, root / f"{name}.yaml")
    return subprocess.run(
        [sys.executable, "-m", "trainer", str(job)],
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    model_name = tiny_model(root)
    path, state = start_weights(root, model_name)
    return root, model_name, path, state


@pytest.fixture(scope="module")
def plain(setup):
    """The run with no option (batchSize 16, as in ``run``): the reference of gradCheckpointing and of
    gradAccumSteps 2 x 8 alike, trained once for both."""
    root, model_name, start_path, _ = setup
    return train(root, "plain", model_name, start_path, {})


def test_lock_image_freezes_the_image_tower_and_trains_the_text_tower(setup):
    root, model_name, start_path, start = setup
    final = train(root, "lock-image", model_name, start_path, {"lockImage": True})
    visual = [k for k in start if k.startswith("visual.")]
    text = [k for k in start if k.startswith(("transformer.", "token_embedding", "text_projection", "ln_final"))]
    assert visual
    assert text
    assert set(final) == set(start)
    assert all(torch.equal(final[k], start[k]) for k in visual), [
        k for k in visual if not torch.equal(final[k], start[k])
    ]
    moved = [k for k in text if not torch.equal(final[k], start[k])]
    assert len(moved) > len(text) // 2, f"text tower barely trained: {len(moved)}/{len(text)} tensors changed"


def test_grad_checkpointing_trains_the_same_weights(setup, plain):
    root, model_name, start_path, start = setup
    ckpt = train(root, "grad-ckpt", model_name, start_path, {"gradCheckpointing": True})
    assert any(not torch.equal(plain[k], start[k]) for k in start), "the plain run did not train"
    # Same float ops recomputed in backward: expect equality up to reduction-order noise.
    far = [k for k in plain if not torch.allclose(plain[k], ckpt[k], rtol=1e-4, atol=1e-6)]
    assert not far, f"weights differ with gradCheckpointing: {far[:5]}"


def test_grad_accumulation_trains_like_the_big_batch(setup, plain):
    """gradAccumSteps 2 x batchSize 8 (negatives span both micro-batches) == batchSize 16 (the plain run), step for step."""
    root, model_name, start_path, start = setup
    big = plain
    accum = train(root, "accum2x8", model_name, start_path, {"batchSize": 8, "gradAccumSteps": 2})
    assert any(not torch.equal(big[k], start[k]) for k in start), "the batch-16 run did not train"
    far = [
        k
        for k in big
        if not torch.allclose(without_key_bias(k, big[k]), without_key_bias(k, accum[k]), rtol=1e-4, atol=1e-6)
    ]
    assert not far, f"weights differ between gradAccumSteps 2 x 8 and batch 16: {far[:5]}"


def without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """Drop the key third of an attention's ``in_proj_bias``: softmax ignores a shift shared by all keys,
    so that bias's true gradient is exactly 0 and what autograd returns is rounding noise, which
    Adam divides by its own tiny magnitude into lr-sized steps of random sign (measured: ~1e-5
    here, while every other weight agrees to ~1e-8)."""
    if not name.endswith("attn.in_proj_bias"):
        return t
    w = t.numel() // 3
    return torch.cat([t[:w], t[2 * w :]])


def changed(final: dict, start: dict, prefix: tuple[str, ...]) -> set[str]:
    return {k for k in start if k.startswith(prefix) and not torch.equal(final[k], start[k])}


#: open_clip's layer groups of the tiny (1-block) towers, last first: [projection], [last block + final norm], [embeddings]
IMAGE_LAST_TWO_GROUPS = ("visual.proj", "visual.ln_post.", "visual.transformer.resblocks.0.")
TEXT_TOWER = ("transformer.", "token_embedding", "positional_embedding", "text_projection", "ln_final")


def test_lock_image_unlocked_groups_trains_exactly_the_last_groups(setup):
    root, model_name, start_path, start = setup
    final = train(root, "unlock-image-2", model_name, start_path, {"lockImage": True, "lockImageUnlockedGroups": 2})
    visual = {k for k in start if k.startswith("visual.")}
    intended = {k for k in visual if k.startswith(IMAGE_LAST_TWO_GROUPS)}
    assert intended
    assert intended != visual
    assert changed(final, start, ("visual.",)) == intended
    assert len(changed(final, start, TEXT_TOWER)) > 5  # the text tower trained


def test_lock_text_unlocked_layers_trains_exactly_the_projection(setup):
    root, model_name, start_path, start = setup
    final = train(root, "unlock-text-1", model_name, start_path, {"lockText": True, "lockTextUnlockedLayers": 1})
    assert changed(final, start, TEXT_TOWER) == {"text_projection"}
    assert len(changed(final, start, ("visual.",))) > 5  # the image tower trained


def test_more_unlocked_groups_than_the_tower_has_exits_2_with_one_line(setup):
    root, model_name, start_path, _ = setup
    proc = run(root, "unlock-too-many", model_name, start_path, {"lockImage": True, "lockImageUnlockedGroups": 4})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "config: spec.training.lockImageUnlockedGroups 4: the image tower (VisionTransformer) has only 3 layer groups"
    )
    assert not (root / "unlock-too-many" / "checkpoints").exists()


#: A tiny ModifiedResNet image tower: the one open_clip tower with BatchNorm (running statistics).
TINY_RESNET = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
        "text_cfg": TINY_CONFIG["model_cfg"]["text_cfg"],
    },
    "preprocess_cfg": TINY_CONFIG["preprocess_cfg"],
}


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen-bn-stats", "live-bn-stats"])
def test_lock_image_freeze_bn_stats_keeps_the_running_statistics(tmp_path, freeze):
    model_name = tiny_model(tmp_path, TINY_RESNET, "tiny-resnet")
    start_path, start = start_weights(tmp_path, model_name)
    final = train(tmp_path, "resnet", model_name, start_path, {"lockImage": True, "lockImageFreezeBnStats": freeze})
    stats = {k for k in start if k.startswith("visual.") and k.endswith(("running_mean", "running_var"))}
    params = (
        {k for k in start if k.startswith("visual.")} - stats - {k for k in start if k.endswith("num_batches_tracked")}
    )
    assert len(stats) >= 10
    assert params
    assert not changed(final, start, tuple(params))  # locked weights never move
    moved = changed(final, start, tuple(stats))
    assert (not moved) if freeze else (moved == stats), sorted(moved)[:5]


def test_a_non_finite_loss_is_a_final_verdict_and_progress_says_failed(setup):
    """A real NaN, not a mock: start weights whose text projection is NaN make the very first loss
    NaN. The trainer exits 4 (EXIT_NONFINITE, a final verdict) with one line, and the progress
    document the controller reads says ``failed`` with that line instead of a stale ``training``;
    so does rank 0's termination message, after the line (docs/contracts.md, "Progress")."""
    import json

    from kubeclip.api import read_termination_message

    root, model_name, _, start = setup
    poisoned = dict(start)
    poisoned["text_projection"] = torch.full_like(start["text_projection"], float("nan"))
    path = root / "nan.safetensors"
    save_file(poisoned, str(path))
    termination_log = root / "nan-termination-log"
    termination_log.write_text("")
    proc = run(root, "nan", model_name, path, {}, {"KUBECLIP_TERMINATION_LOG": str(termination_log)})
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("training: loss is nan at step 1"), last
    progress = json.loads((root / "nan" / "progress.json").read_text())
    assert progress["phase"] == "failed", progress
    assert progress["message"].startswith("training: loss is nan"), progress
    # the termination message: the same line for the job's Failed message, then rank 0's progress
    text, final = read_termination_message(termination_log.read_text())
    assert text == last
    assert final is not None
    assert final.phase == "failed"
    assert (final.step, final.totalSteps) == (0, progress["totalSteps"])
