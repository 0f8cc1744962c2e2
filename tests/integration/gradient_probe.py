"""Gradients of the trainer's step for several loss/accumulation options, for the equivalence tests.

Who uses it: ``tests/integration/test_trainer_gradients.py``, which runs this file under
``torchrun --nproc_per_node 2`` (real gloo processes on loopback) and also imports it to compute
the one-process reference in its own process. Each case builds the same real OpenCLIP model (a
tiny CLIP, or the same with a ``logit_bias``: SigLIP), gives rank r the rows
``[r*k*b, (r+1)*k*b)`` of one fixed batch as ``k`` micro-batches of ``b`` rows, runs the trainer's
own :func:`trainer.train.forward_backward` through :func:`trainer.distributed.wrap` (DDP) with
:func:`trainer.loss.make_loss`, and rank 0 saves every parameter's gradient after DDP's sync.
"""

from __future__ import annotations

import math
import sys

import torch

from trainer import distributed
from trainer.loss import make_loss
from trainer.train import forward_backward

ROWS = 8  # rows of the global batch in every case

CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "head_width": 8, "layers": 2, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 2},
}
SIGLIP_CFG = dict(CLIP_CFG, init_logit_scale=math.log(10), init_logit_bias=-10.0)

#: name -> (siglip, localLoss, gatherWithGrad, micro-batches per rank k); b = ROWS / (world * k)
CASES = {
    "clip_gather_with_grad": (False, False, True, 1),
    "clip_local_loss_gather_with_grad": (False, True, True, 1),
    "clip_default": (False, False, False, 1),
    "clip_gather_with_grad_accum2": (False, False, True, 2),
    "siglip": (True, False, False, 1),
    "siglip_accum2": (True, False, False, 2),
}


def build_model(siglip: bool) -> torch.nn.Module:
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(**(SIGLIP_CFG if siglip else CLIP_CFG))
    model.train()
    return model


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(ROWS, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 64, (ROWS, 8), generator=g)
    return images, tokens


def gradients(siglip: bool, local_loss: bool, gather_with_grad: bool, k: int, topo) -> dict[str, torch.Tensor]:
    """This rank's parameter gradients after one trainer step's forward/backward (synced by DDP)."""
    model = build_model(siglip)
    ddp = distributed.wrap(model, topo)
    loss_fn = make_loss(siglip, topo.rank, topo.world, local_loss=local_loss, gather_with_grad=gather_with_grad)
    images, tokens = data()
    b = ROWS // (topo.world * k)
    first = topo.rank * k * b
    micro = [
        (images[first + j * b : first + (j + 1) * b], tokens[first + j * b : first + (j + 1) * b]) for j in range(k)
    ]
    forward_backward(ddp, loss_fn, micro)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def main(out: str) -> None:
    torch.set_num_threads(1)
    topo = distributed.setup()
    results = {name: gradients(*case, topo=topo) for name, case in CASES.items()}
    if topo.is_main:
        torch.save(results, out)
    distributed.barrier(topo)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
