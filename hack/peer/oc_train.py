#!/usr/bin/env python3
"""Start open_clip_train 3.3.0 unmodified, with one opt-in fix for DDP on CPU.

Who uses it: ``hack/bench_trainer.py`` for the peer's 2-process gloo runs (through
``torch.distributed.run``). Arguments are open_clip_train's own.

Why a launcher: open_clip_train 3.3.0 builds ``DistributedDataParallel(model,
device_ids=[device], ...)`` even when ``device`` is the CPU, and PyTorch rejects ``device_ids``
for a CPU module, so every CPU DDP run of it stops at start-up. With ``KUBECLIP_PEER_CPU_DDP_FIX=1``
this module replaces ``torch.nn.parallel.DistributedDataParallel`` by a subclass that drops
``device_ids``/``output_device`` when they name the CPU, and changes nothing else.
"""

from __future__ import annotations

import os
import sys

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


if __name__ == "__main__":
    if os.environ.get("KUBECLIP_PEER_CPU_DDP_FIX") == "1":
        install_cpu_ddp_fix()
    from open_clip_train.main import main

    main(sys.argv[1:])
