"""``python -m trainer.node JOB.yaml``: the container command of every FineTuneJob pod.

Who runs it: the pods the controller creates (``docs/contracts.md``, "Pods").

1. It validates the manifest and runs the dataset preflight once per node (no torch import, about
   a second), so a bad CSV ends the pod with exit code 3 and its reason in ``/dev/termination-log``
   instead of N ranks crashing in a data loader.
2. On nodes other than 0 it waits until node 0's address resolves and its rendezvous port
   accepts connections (node 0's pod may wait for a GPU node to scale up or an image to pull),
   for at most ``spec.rendezvousTimeoutSeconds``; then exit 6 (``EXIT_RENDEZVOUS_TIMEOUT``).
3. It runs torchrun's agent *in this process* (``torch.distributed.run``, the same code and
   signal handling as the ``torchrun`` command), which reads its topology from the ``PET_*``
   variables the controller sets (``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
   ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``), with the same rendezvous timeout.
   Before that, node 0 claims the output directory for this job (``trainer.ownership``: another
   job's marker ends the pod with exit 7, ``OutputInUse``), the other nodes check it, and the
   preflight's tables are dropped: the training processes map the node's shared copy of the rows
   (``trainer.rowtable``), which the preflight built.
4. It turns the way torchrun ended into the container's exit code and termination message: the
   first failed worker's own exit code (2..5 and 7..9 are the trainer's verdicts, which wrote their line
   already), ``128+N`` for a worker killed by signal N (SIGSEGV, SIGBUS from a full /dev/shm,
   an NCCL abort) with that signal named, and 6 for a rendezvous that timed out. The ``torchrun``
   command itself exits 1 for all of these, which the controller could not tell apart.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping

from kubeclip.api import (
    DEFAULT_MASTER_PORT,
    EXIT_CONFIG,
    EXIT_PREFLIGHT,
    EXIT_RENDEZVOUS_TIMEOUT,
    SIGNAL_EXIT_BASE,
    ConfigError,
    OutputInUse,
    TrainerSpec,
    load_manifest,
    signal_name,
    termination_log_path,
)
from trainer import exits


def torchrun_env(spec: TrainerSpec, environ: Mapping[str, str]) -> dict[str, str]:
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


class RendezvousTimeout(Exception):
    """Node 0 could not be reached in time; ``str()`` is one line."""


def wait_for_master(
    host: str,
    port: int,
    timeout_s: float,
    *,
    interval_s: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda _: None,
) -> None:
    """Return once ``host`` resolves and ``host:port`` accepts a TCP connection; raise
    :class:`RendezvousTimeout` after ``timeout_s``. The headless Service publishes node 0's DNS
    record as soon as its pod has an IP; until then resolution fails, which is not an error here."""
    deadline = clock() + timeout_s
    last = "not tried"
    announced = False
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, max(0.1, interval_s))):
                return
        except socket.gaierror as err:
            last = f"{host} does not resolve ({err.strerror})"
        except OSError as err:
            last = f"{host}:{port} refuses connections ({err.strerror or err})"
        if clock() >= deadline:
            raise RendezvousTimeout(
                f"rendezvous: node 0 not reachable after {timeout_s:.0f}s (spec.rendezvousTimeoutSeconds): {last}"
            )
        if not announced:
            log(f"waiting for node 0 at {host}:{port}: {last}")
            announced = True
        time.sleep(interval_s)


def run_torchrun(args: list[str], *, termination_log: str | None = None) -> int:
    """Run torchrun's agent here with ``args`` (torchrun's own command line); return the exit code
    that carries the real cause, and write the cause to ``termination_log`` (default
    ``kubeclip.api.termination_log_path()``) when no worker did."""
    from torch.distributed import DistStoreError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    from trainer.failure import exit_code, killed_by

    termination_log = termination_log or termination_log_path()

    def fail(line: str, code: int) -> int:
        return exits.fail(line, code, path=termination_log)

    try:
        run(parse_args(args))
        return 0
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        sig = killed_by(failure)
        if sig is not None:  # the worker died from a signal: report it the shell's way
            return fail(f"rank {rank} (pid {failure.pid}) killed by {signal_name(sig)}", SIGNAL_EXIT_BASE + sig)
        code = exit_code(failure)  # a rank that failed by itself, even if torchrun then SIGTERMed it
        if not exits.has_content(termination_log):  # the trainer's verdicts wrote their own line
            detail = (failure.message or "").strip()
            if detail and "enable traceback" not in detail:
                fail(f"rank {rank} exited with code {code}: {detail.splitlines()[-1]}", 0)
        return code
    except SignalException as err:  # this pod was told to stop (deletion, eviction)
        line = f"torchrun stopped by {signal_name(err.sigval)}"
        if exits.has_content(termination_log):  # rank 0 said where it stopped and checkpointed (trainer.preemption)
            print(line, file=sys.stderr, flush=True)
            return SIGNAL_EXIT_BASE + int(err.sigval)
        return fail(line, SIGNAL_EXIT_BASE + int(err.sigval))
    except (RendezvousError, DistStoreError) as err:
        line = " ".join(str(err).split())
        return fail(f"rendezvous: {line[:300]}", EXIT_RENDEZVOUS_TIMEOUT)


def claim_output(job: str, spec: TrainerSpec, node_rank: int = 0) -> None:
    """Node 0 (or the one process of ``kubeclip run``) makes this job the owner of
    ``spec.output.path``; other nodes only check it. Raises :class:`OutputInUse`."""
    from trainer import ownership

    owner = ownership.identity(job)
    if node_rank == 0:
        previous = ownership.claim(spec.output.path, owner, spec.output.takeOver)
        if previous is not None:
            print(
                f"output: {spec.output.path} taken over from job {previous.describe()} (spec.output.takeOver)",
                file=sys.stderr,
                flush=True,
            )
    elif not spec.output.takeOver:
        ownership.check(spec.output.path, owner)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainer.node JOB.yaml", file=sys.stderr)
        return EXIT_CONFIG
    manifest = argv[0]
    from trainer.preflight import run_preflight
    from trainer.table import PreflightError

    try:
        job, spec = load_manifest(manifest)
    except ConfigError as err:
        return exits.fail(f"config: {err}", EXIT_CONFIG)
    try:
        report = run_preflight(spec, world=spec.numNodes * spec.numProcPerNode)
    except PreflightError as err:
        return exits.fail(f"preflight: {err}", EXIT_PREFLIGHT)
    print(report.summary(), file=sys.stderr, flush=True)
    del report  # the ranks map the node's copy of the rows; this process keeps nothing of them
    gc.collect()
    env = torchrun_env(spec, os.environ)
    try:
        claim_output(job, spec, node_rank=int(env["PET_NODE_RANK"]))
    except OutputInUse as err:
        return exits.fail(str(err), err.exit_code)
    if int(env["PET_NODE_RANK"]) != 0 and int(env["PET_NNODES"]) > 1:
        try:
            wait_for_master(
                env["PET_MASTER_ADDR"],
                int(env["PET_MASTER_PORT"]),
                spec.rendezvousTimeoutSeconds,
                log=lambda line: print(line, file=sys.stderr, flush=True),
            )
        except RendezvousTimeout as err:
            return exits.fail(str(err), EXIT_RENDEZVOUS_TIMEOUT)
    os.environ.clear()
    os.environ.update(env)  # torchrun's arguments default to the PET_* variables; workers inherit the rest
    sys.stderr.flush()
    return run_torchrun(["--rdzv-conf", f"timeout={spec.rendezvousTimeoutSeconds}", "-m", "trainer", manifest])


if __name__ == "__main__":
    sys.exit(main())
