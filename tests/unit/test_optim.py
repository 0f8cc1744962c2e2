"""The optimizer the trainer builds and its schedule: torch's AdamW with the project's param groups,
fused where torch has the kernel; the schedule warms up then decays to 0."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the trainer extra; make test installs it

from trainer.model import param_groups  # noqa: E402
from trainer.optim import BETAS, EPS, adamw, default_warmup, lr_at, set_lr  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "head_width": 8, "layers": 1, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}


def tiny_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    return CLIP(**TINY)


def test_param_groups_decay_matrices_only():
    model = tiny_clip()
    decayed, other = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    other_names = {names[id(p)] for p in other["params"]}
    assert decayed["weight_decay"] == 0.1
    assert other["weight_decay"] == 0.0
    assert "logit_scale" in other_names
    assert "visual.ln_post.weight" in other_names
    assert "token_embedding.weight" in other_names
    assert "visual.positional_embedding" in other_names
    assert all(not n.endswith(".bias") for n in decayed_names)
    assert "visual.transformer.resblocks.0.mlp.c_fc.weight" in decayed_names
    assert "text_projection" in decayed_names
    assert decayed_names | other_names == {n for n, _ in model.named_parameters()}


def test_frozen_parameters_are_left_out():
    model = tiny_clip()
    model.lock_image_tower()
    groups = param_groups(model, 0.1)
    assert not any(p is q for g in groups for p in g["params"] for q in model.visual.parameters())


def test_adamw_is_torch_fused_with_clip_betas_and_the_groups():
    model = tiny_clip()
    opt = adamw(param_groups(model, 0.1), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is True
    assert opt.defaults["betas"] == BETAS
    assert opt.defaults["eps"] == EPS
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
    # one real step moves the weights (the fused CPU kernel runs)
    before = model.text_projection.detach().clone()
    model.text_projection.grad = torch.ones_like(model.text_projection)
    opt.step()
    assert not torch.equal(before, model.text_projection)


def test_schedule():
    assert lr_at(0, 1.0, 4, 100) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 100) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 100) == pytest.approx(1.0)
    assert lr_at(52, 1.0, 4, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 4, 100) == pytest.approx(0.0, abs=1e-12)
    assert default_warmup(1000) == 50
    assert default_warmup(3) == 1
