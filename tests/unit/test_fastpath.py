"""``trainer.fastpath``: the loss bookkeeping that stays on the device until a check reads it."""

from __future__ import annotations

import math

import pytest
import torch

from kubeclip.api import NonFiniteLoss
from trainer.fastpath import CompileClock, LossWatch


def test_the_first_non_finite_step_is_remembered_until_a_check_reads_it():
    w = LossWatch(torch.device("cpu"))
    w.observe(torch.tensor(1.5), 1)
    w.check(0)  # all finite: nothing raised
    for step, loss in ((2, 2.5), (3, float("nan")), (4, float("inf")), (5, 1.0)):
        w.observe(torch.tensor(loss), step)
    with pytest.raises(NonFiniteLoss) as err:
        w.check(0)
    assert str(err.value) == (
        "training: loss is nan at step 3 (epoch 0); lower training.learningRate or set training.gradClipNorm"
    )
    assert float(w.last) == 1.0


def test_an_infinite_loss_gives_the_same_verdict_with_inf():
    w = LossWatch(torch.device("cpu"))
    w.observe(torch.tensor(float("inf")), 7)
    with pytest.raises(NonFiniteLoss, match=r"^training: loss is inf at step 7 \(epoch 2\);"):
        w.check(2)


def test_the_mean_covers_the_steps_since_the_last_take():
    w = LossWatch(torch.device("cpu"))
    assert w.take_mean() is None
    for i, loss in enumerate((1.0, 2.0, 6.0), 1):
        w.observe(torch.tensor(loss, requires_grad=True) * 1, i)
    assert w.take_mean() == 3.0
    w.observe(torch.tensor(4.0), 4)
    assert w.take_mean() == 4.0
    assert math.isclose(float(w.total), 0.0)


def test_compile_clock_times_only_steps_with_new_shapes():
    c = CompileClock(enabled=True)
    assert c.start([((4, 3), (4, 16))])
    assert c.stop(sync=False) is not None
    assert not c.start([((4, 3), (4, 16))])
    assert c.stop(sync=False) is None
    assert c.start([((4, 3), (4, 16)), ((4, 3), (4, 32))])
    assert c.stop(sync=False) is not None
    assert c.graphs == 2
    assert c.seconds > 0
    off = CompileClock(enabled=False)
    assert not off.start([((4, 3), (4, 16))])
    assert off.stop(sync=False) is None
