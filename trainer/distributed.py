"""Process topology, the DDP wrapper and the object collectives the loop needs.

Who uses it: ``trainer.train``.

``torchrun`` (or ``kubeclip run``'s elastic launcher, or the pod's ``trainer.node``) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; without them the
trainer is a plain single process. The backend is NCCL on GPU and gloo on CPU.

The model is wrapped in ``DistributedDataParallel`` (:func:`wrap`); what the averaged gradient
is for each loss option is worked out in ``trainer.loss``. The object collectives below carry
checkpoint paths, RNG states and weight digests between ranks.
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


def wrap(model: torch.nn.Module, topo: Topology) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when there are several processes, else the model itself.

    DDP broadcasts rank 0's weights and buffers at construction (every rank starts identical) and
    all-reduces (averages) gradients in buckets while backward still runs. Checkpoints and exports
    use the unwrapped model, so their keys have no ``module.`` prefix.
    """
    if topo.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [topo.device.index] if topo.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


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
