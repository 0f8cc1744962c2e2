"""spec.training.precision on a device (trainer/precision.py) and a crashed rank's one line (trainer/failure.py)."""

from __future__ import annotations

import pytest
import torch

from trainer import failure, precision


@pytest.mark.parametrize("mode", ["fp16", "amp", "amp_fp16"])
def test_fp16_modes_are_refused_without_a_gpu_with_one_line(mode):
    line = precision.refusal(mode, cuda=False)
    assert line is not None
    assert "\n" not in line
    assert line.startswith(f"spec.training.precision {mode}: needs a CUDA GPU")
    assert precision.refusal(mode, cuda=True) is None


@pytest.mark.parametrize("mode", ["fp32", "bf16", "amp_bf16"])
def test_cpu_modes_run_on_cpu(mode):
    assert precision.refusal(mode, cuda=False) is None


def test_bf16_modes_are_refused_on_a_gpu_without_bf16():
    assert "no bf16 support" in (precision.refusal("bf16", cuda=True, cuda_bf16=False) or "")
    assert precision.refusal("amp_bf16", cuda=True, cuda_bf16=False) is not None
    assert precision.refusal("amp", cuda=True, cuda_bf16=False) is None


def test_modes_mean_what_open_clip_train_means():
    cpu = torch.device("cpu")
    assert precision.setup("bf16", cpu)[0] == torch.bfloat16
    assert precision.setup("fp16", cpu)[0] == torch.float16
    dtype, autocast, scaler = precision.setup("amp_bf16", cpu)
    assert dtype == torch.float32
    assert not scaler
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert precision.setup("amp", cpu)[2]
    assert precision.setup("amp_fp16", cpu)[2]
    assert precision.setup("fp32", cpu)[:1] == (torch.float32,)


def test_input_dtype_is_the_image_towers():
    model = torch.nn.Module()
    model.visual = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert precision.input_dtype(model) == torch.bfloat16


def test_a_crash_summary_is_one_bounded_line_with_where_it_was_raised(monkeypatch):
    monkeypatch.setenv("RANK", "3")

    def deep():
        raise RuntimeError("Input type (float) and bias type (c10::BFloat16) should be the same\nmore detail")

    try:
        deep()
    except RuntimeError as err:
        line = failure.summary(err)
    assert line.startswith("rank 3 failed: RuntimeError: Input type (float) and bias type")
    assert line.endswith(f"(test_precision.py:{deep.__code__.co_firstlineno + 1} in deep)")
    assert "\n" not in line
    with pytest.raises(ValueError, match="x") as raised:
        raise ValueError("x" * 5000)
    assert len(failure.summary(raised.value)) <= failure.MAX_LINE
