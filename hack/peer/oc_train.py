#!/usr/bin/env python3
"""Start open_clip_train 3.3.0 unmodified, with one opt-in fix for DDP on CPU.

Who uses it: ``hack/bench_trainer.py`` for the peer's 2-process gloo runs (through
``torch.distributed.run``). Arguments are open_clip_train's own.

Why a launcher: open_clip_train 3.3.0 builds ``DistributedDataParallel(model,
device_ids=[device], ...)`` even when ``device`` is the CPU, and PyTorch rejects ``device_ids``
for a CPU module, so every CPU DDP run of it stops at start-up. With ``KUBECLIP_PEER_CPU_DDP_FIX=1``
this module replaces ``torch.nn.parallel.DistributedDataParallel`` by a subclass that drops
``device_ids``/``output_device`` when they name the CPU, and changes nothing else.

``hack/bench_gpu.py`` also starts the peer through this module, with
``KUBECLIP_PEER_WAIT_LOG=FILE``: every ``next()`` on a ``DataLoader`` iterator in the main process is
timed (what kubeclip's loop reports as its data wait: the time blocked getting the next batch),
and the list of ``[end time, seconds]`` pairs is written to FILE as JSON at exit. The peer's own
``Data (t)`` also contains the GPU drain of its log steps' ``.item()``, so the bench uses this
instead, the same quantity for both trainers. Nothing else changes.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

import torch


def install_cpu_ddp_fix() -> None:
    ddp = torch.nn.parallel.DistributedDataParallel

    def on_cpu(d) -> bool:
        return d is not None and torch.device(d).type == "cpu"

    class CpuTolerantDDP(ddp):
        def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
            if device_ids and all(on_cpu(d) for d in device_ids):
                device_ids = None
            if on_cpu(output_device):
                output_device = None
            super().__init__(module, device_ids, output_device, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuTolerantDDP


def install_wait_log(path: str) -> None:
    from torch.utils.data import dataloader

    calls: list[list[float]] = []
    base = dataloader._BaseDataLoaderIter.__next__

    def timed_next(self):
        t0 = time.perf_counter()
        try:
            return base(self)
        finally:
            calls.append([time.time(), time.perf_counter() - t0])

    dataloader._BaseDataLoaderIter.__next__ = timed_next  # type: ignore[method-assign]

    def write_calls() -> None:
        with open(path, "w") as f:
            f.write(json.dumps(calls))

    atexit.register(write_calls)


if __name__ == "__main__":
    if os.environ.get("KUBECLIP_PEER_CPU_DDP_FIX") == "1":
        install_cpu_ddp_fix()
    if os.environ.get("KUBECLIP_PEER_WAIT_LOG"):
        install_wait_log(os.environ["KUBECLIP_PEER_WAIT_LOG"])
    from open_clip_train.main import main

    main(sys.argv[1:])
