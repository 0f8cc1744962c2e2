"""The trainer's own AdamW matches torch.optim.AdamW; the schedule warms up then decays to 0."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the trainer extra; make test installs it

from trainer.optim import AdamW, default_warmup, lr_at  # noqa: E402


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "foreach-fallback"])
def test_adamw_matches_torch_adamw(fused):
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(5))]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    t_opt = torch.optim.AdamW([{"params": [ref[0]], "weight_decay": 0.1}, {"params": [ref[1]], "weight_decay": 0.0}],
                              lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    o_opt = AdamW([{"params": [ours[0]], "weight_decay": 0.1}, {"params": [ours[1]], "weight_decay": 0.0}])
    o_opt.fused = fused
    for step in range(6):
        lr = 1e-2 * (step + 1) / 6
        for g in t_opt.param_groups:
            g["lr"] = lr
        o_opt.set_lr(lr)
        grads = [torch.randn_like(p) for p in ref]
        for p, q, g in zip(ref, ours, grads):
            p.grad, q.grad = g.clone(), g.clone()
        t_opt.step()
        o_opt.step()
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert o_opt.fused == fused  # the fused kernel really ran (it did not fall back)


def test_adamw_state_round_trip():
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([{"params": [p], "weight_decay": 0.0}])
    opt.set_lr(0.1)
    p.grad = torch.ones(3)
    opt.step()
    q = torch.nn.Parameter(torch.ones(3))
    opt2 = AdamW([{"params": [q], "weight_decay": 0.0}])
    opt2.load_state_dict(opt.state_dict())
    assert opt2.step_count == 1 and torch.equal(opt2.exp_avg[0][0], opt.exp_avg[0][0])


def test_schedule():
    assert lr_at(0, 1.0, 4, 100) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 100) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 100) == pytest.approx(1.0)
    assert lr_at(52, 1.0, 4, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 4, 100) == pytest.approx(0.0, abs=1e-12)
    assert default_warmup(1000) == 50 and default_warmup(3) == 1
