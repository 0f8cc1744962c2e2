"""``python -m trainer.node JOB.yaml``: the container command of every FineTuneJob pod.

Who runs it: the pods the controller creates (``docs/contracts.md``, "Pods").

It validates the manifest and runs the dataset preflight once per node (no torch import, about a
second), so a bad CSV ends the pod with exit code 3 and its reason in ``/dev/termination-log``
instead of N ranks crashing in a data loader. Then it *execs* torchrun (the pod's process
becomes torchrun: signals and the exit code pass straight through), which reads its topology from
the ``PET_*`` variables the controller sets: ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``.
"""

from __future__ import annotations

import os
import sys

from trainer.config import DEFAULT_MASTER_PORT, EXIT_CONFIG, EXIT_PREFLIGHT, ConfigError, load_manifest


def torchrun_env(spec, environ: dict) -> dict:
    """The environment torchrun starts with: PET_* from the pod, else derived from the spec."""
    env = dict(environ)
    env.setdefault("PET_NNODES", str(spec.numNodes))
    env.setdefault("PET_NPROC_PER_NODE", str(spec.numProcPerNode))
    env.setdefault("PET_NODE_RANK", env.get("NODE_RANK", "0"))
    env.setdefault("PET_MASTER_ADDR", env.get("MASTER_ADDR", "127.0.0.1"))
    env.setdefault("PET_MASTER_PORT", env.get("MASTER_PORT", str(DEFAULT_MASTER_PORT)))
    # torchrun sets these per worker; values inherited from the pod (the PyTorchJob-style
    # RANK = node index, WORLD_SIZE = all processes) would confuse the workers' own reading.
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    env["KUBECLIP_PREFLIGHT_DONE"] = "1"
    return env


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainer.node JOB.yaml", file=sys.stderr)
        return EXIT_CONFIG
    manifest = argv[0]
    from trainer.preflight import PreflightError, fail, run_preflight

    try:
        _, spec = load_manifest(manifest)
    except ConfigError as err:
        return fail(f"config: {err}", EXIT_CONFIG)
    try:
        report = run_preflight(spec, world=spec.numNodes * spec.numProcPerNode)
    except PreflightError as err:
        return fail(f"preflight: {err}", EXIT_PREFLIGHT)
    print(report.summary(), file=sys.stderr, flush=True)
    env = torchrun_env(spec, os.environ)
    cmd = [sys.executable, "-m", "torch.distributed.run", "-m", "trainer", manifest]
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
