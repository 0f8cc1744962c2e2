"""``python -m trainer JOB.yaml [--output DIR]``: what every training process runs (torchrun's target).

Who runs it: ``torchrun -m trainer`` (started by ``trainer.node`` in a pod, or by hand),
``kubeclip run`` (through the elastic launcher), or a person for a single-process run.

Order matters for start-up time: the manifest is validated (pydantic) before anything else, and
the dataset preflight (pandas, image checks) runs in a forked child while this process imports
torch and open_clip (``trainer.preflight.BackgroundPreflight``); a bad dataset ends the run as soon
as the child finds it. Every one-line failure goes out through ``trainer.exits.fail``. Exit codes: 0 done, ``EXIT_CONFIG`` (2) bad manifest or a model that does
not fit it (``trainer.model.ModelError``), ``EXIT_PREFLIGHT`` (3) bad dataset (one line on stderr
and in /dev/termination-log), the other final verdicts of ``kubeclip.api.TrainerVerdict``
(4 non-finite loss, 5 checkpoint mismatch, 7 output owned by another job, 8 no readable
checkpoint, 9 an image that does not decode; also one line, followed in the termination message by
rank 0's final progress), ``128 + N`` stopped by signal N (SIGTERM, SIGINT) at a step boundary
after a checkpoint (``trainer.preemption``), 1 anything else (a crash: its exception and the
last traceback lines go to the termination log and torchrun's error file, ``trainer.failure``).
A ``spec.training.precision`` this device cannot run (fp16 or amp without a GPU) is exit 2.
``KUBECLIP_PREFLIGHT_DONE=1`` (set by ``trainer.node`` and ``kubeclip run``, which ran it
already) skips the image checks here; the child then only reads the tables.
"""

from __future__ import annotations

import time

STARTED = time.time()  # first thing: the trainer reports its start-up time from here

import argparse  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from kubeclip.api import (  # noqa: E402
    EXIT_CONFIG,
    EXIT_PREFLIGHT,
    ConfigError,
    TrainerVerdict,
    load_manifest,
    termination_log_path,
)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m trainer", description="Fine-tune OpenCLIP on a CSV dataset.")
    ap.add_argument("manifest", help="FineTuneJob manifest (YAML)")
    ap.add_argument("--output", help="override spec.output.path")
    return ap.parse_args(argv)


def load(manifest: str, output: str | None):
    job, spec = load_manifest(manifest)
    if output:  # the other output fields (tensorboard) stay as the manifest says
        spec = spec.model_copy(update={"output": spec.output.model_copy(update={"path": output})})
    return job, spec


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        job, spec = load(args.manifest, args.output)
    except ConfigError as err:
        if rank0:
            print(f"config: {err}", file=sys.stderr)
        return EXIT_CONFIG

    from trainer.exits import fail
    from trainer.preflight import BackgroundPreflight
    from trainer.table import PreflightError

    # The preflight (pandas, image checks) runs in a forked child while this process imports
    # torch and open_clip below; a bad dataset still exits 3 within about a second.
    checked = os.environ.get("KUBECLIP_PREFLIGHT_DONE") == "1"  # by trainer.node or kubeclip run
    # Under a bare torchrun, one process per node checks the images; the others read the tables
    # (a failure there exits 3 and torchrun stops the node's other ranks).
    local_lead = os.environ.get("LOCAL_RANK", "0") == "0"
    pending = BackgroundPreflight(
        spec,
        tables_only=checked or not local_lead,
        announce=local_lead,
        exit_code=EXIT_PREFLIGHT,
        termination_log=termination_log_path(),
    )
    from trainer.model import ModelError  # imports torch and open_clip while the child checks the data

    try:
        report = pending.result()
    except PreflightError as err:
        return fail(f"preflight: {err}", EXIT_PREFLIGHT, echo=rank0)
    if rank0 and not checked:
        print(report.summary(), file=sys.stderr, flush=True)
        from kubeclip.api import OutputInUse
        from trainer.node import claim_output

        try:  # a bare torchrun: nothing claimed the output before this process (trainer.ownership)
            claim_output(job, spec)
        except OutputInUse as err:
            return fail(str(err), err.exit_code)

    from trainer.failure import record
    from trainer.precision import device_refusal
    from trainer.preemption import Preempted

    refused = device_refusal(spec.training.precision)
    if refused:  # e.g. fp16 on a machine without a GPU: a config this device cannot run
        return record(fail(f"config: {refused}", EXIT_CONFIG, echo=rank0), f"config: {refused}")

    from trainer.train import train

    try:
        train(job, spec, report, started_at=STARTED)
    except TrainerVerdict as err:  # deterministic: a final verdict for the controller (docs/contracts.md)
        # Rank 0's line carries its final progress; the node's other ranks do not write over it.
        code = fail(str(err), err.exit_code, echo=rank0, progress=err.progress, overwrite=rank0)
        return record(code, str(err))
    except ModelError as err:  # the model does not fit the spec (e.g. CoCa, too many unlocked groups)
        return record(fail(f"config: {err}", EXIT_CONFIG, echo=rank0), f"config: {err}")
    except Preempted as err:  # SIGTERM/SIGINT: stopped at a step boundary after a checkpoint
        # every node's termination message says where the run stopped; node 0's is rank 0's line
        return record(fail(str(err), err.exit_code, echo=rank0, overwrite=rank0), str(err))
    except Exception as err:  # a crash: its cause where people look (console, termination message)
        from trainer.failure import crashed

        crashed(err)
        raise
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and closed. What is left is the interpreter's own shutdown, whose garbage
    # collection walks every object torch and open_clip created at import (torch._dynamo and the
    # rest): measured 1-3 s per process on 2 CPU cores, for every rank of every run. Frozen objects
    # are skipped by that collection; atexit handlers (logging's flush among them) still run.
    gc.freeze()
    sys.exit(code)
