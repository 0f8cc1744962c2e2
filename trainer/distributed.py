"""Process topology and the three collectives the loop needs.

Who uses it: ``trainer.train``.

``torchrun`` (or ``kubeclip run``'s elastic launcher, or the pod's ``trainer.node``) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; without them the
trainer is a plain single process. The backend is NCCL on GPU and gloo on CPU.

The loop does not wrap the model in ``DistributedDataParallel`` (whose constructor imports
``torch._dynamo``, see ``trainer.model``): it all-reduces the gradients itself, once per optimizer
step, so gradient accumulation needs no ``no_sync``. Each rank computes the contrastive loss over
the features of the whole global batch (gathered from all ranks), with gradients flowing through
its own local features only; summing those gradients over ranks gives exactly the gradient of
the global-batch loss, so N processes x batch B train like 1 process x batch N*B.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Topology:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Topology:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        # Share the cores between the local processes: oversubscription makes CPU DDP crawl.
        # OMP_NUM_THREADS, when set, wins (torch already read it).
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
    return Topology(rank=rank, local_rank=local_rank, world=world, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_features(local: torch.Tensor, topo: Topology) -> torch.Tensor:
    """Concatenate every rank's features in rank order; this rank's slice keeps its gradient."""
    if topo.world == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(topo.world)]
    dist.all_gather(parts, local.detach().contiguous())
    parts[topo.rank] = local
    return torch.cat(parts, dim=0)


def all_reduce_gradients(params: list[torch.nn.Parameter], topo: Topology) -> None:
    """Sum gradients over ranks in one flat buffer (missing grads count as zero)."""
    if topo.world == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        chunk = flat[offset : offset + n].view_as(g)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def broadcast_parameters(module: torch.nn.Module, topo: Topology) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if topo.world == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def barrier(topo: Topology) -> None:
    if topo.world > 1:
        dist.barrier()


def gather_objects(obj, topo: Topology) -> list:
    """Every rank's ``obj`` (rank order), on every rank."""
    if topo.world == 1:
        return [obj]
    out = [None] * topo.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, topo: Topology):
    if topo.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
