"""Gradient equivalence: N processes x batch B vs 1 process x batch N*B, and accumulation vs one big batch.

What ``trainer.loss`` states, checked with the trainer's own step (``trainer.train.forward_backward``)
on a real OpenCLIP model: 2 real gloo processes (``torchrun --nproc_per_node 2``, loopback) run
``gradient_probe.py``; the reference is one process with all rows in one batch, computed here.

* ``gatherWithGrad`` (with or without ``localLoss``), SigLIP, and accumulation of k micro-batches
  (one process, or combined with 2 processes): every gradient, logit_scale/logit_bias included,
  equals the reference within float tolerance.
* open_clip's default (both false): logit_scale's gradient is exact, every other one is the
  reference divided by the number of processes (DDP averages; see ``trainer.loss``).
* Control: accumulating per-micro-batch losses (negatives only inside each micro-batch) gives a
  different gradient on this data, so the accumulation check can tell the two apart.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import gradient_probe as probe
import pytest
import torch
from trainer_helpers import VENV_BIN, env

from trainer.distributed import Topology
from trainer.loss import make_loss
from trainer.train import forward_backward

pytestmark = pytest.mark.slow

ONE = Topology(rank=0, local_rank=0, world=1, device=torch.device("cpu"))


def far(got: dict, want: dict, scale: float = 1.0) -> list[str]:
    """Names whose gradient differs from ``scale * want`` by more than float noise (relative to the tensor)."""
    bad = []
    for name, w in want.items():
        w = w * scale
        tol = 1e-4 * w.abs().max().item() + 1e-8
        if (got[name] - w).abs().max().item() > tol:
            bad.append(name)
    return bad


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("grads") / "grads.pt"
    proc = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(Path(probe.__file__)), str(out)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


def reference(siglip: bool) -> dict:
    return probe.gradients(siglip, False, False, 1, ONE)


@pytest.mark.parametrize(
    "case",
    [
        "clip_gather_with_grad",
        "clip_local_loss_gather_with_grad",
        "clip_gather_with_grad_accum2",
        "siglip",
        "siglip_accum2",
    ],
)
def test_two_processes_give_the_global_batch_gradient(two_processes, case):
    siglip = probe.CASES[case][0]
    ref, got = reference(siglip), two_processes[case]
    assert got.keys() == ref.keys()
    assert "logit_scale" in ref
    assert not siglip or "logit_bias" in ref
    assert not far(got, ref), far(got, ref)


def test_default_options_scale_encoder_gradients_by_one_over_n(two_processes):
    ref, got = reference(False), two_processes["clip_default"]
    assert not far({"logit_scale": got["logit_scale"]}, {"logit_scale": ref["logit_scale"]})
    encoders = {n: g for n, g in ref.items() if n != "logit_scale" and g.abs().max() > 0}
    assert len(encoders) > 10
    assert not far(got, encoders, scale=0.5), far(got, encoders, scale=0.5)


@pytest.mark.parametrize("siglip", [False, True], ids=["clip", "siglip"])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_gives_the_big_batch_gradient(siglip, k):
    torch.set_num_threads(1)
    ref = reference(siglip)
    got = probe.gradients(siglip, False, False, k, ONE)
    assert not far(got, ref), far(got, ref)


def test_per_micro_batch_losses_would_differ():
    """Control: without the feature cache (each micro-batch its own negatives) the gradient differs."""
    torch.set_num_threads(1)
    ref = reference(False)
    model = probe.build_model(False)
    images, tokens = probe.data()
    loss_fn = make_loss(False, 0, 1)
    for j in range(2):
        forward_backward(model, loss_fn, [(images[j * 4 : (j + 1) * 4], tokens[j * 4 : (j + 1) * 4])])
    naive = {n: p.grad / 2 for n, p in model.named_parameters()}
    assert len(far(naive, ref)) > len(ref) // 2
