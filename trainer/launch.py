"""``kubeclip run JOB.yaml``: run a FineTuneJob on this machine with ``numProcPerNode`` processes.

Who uses it: ``kubeclip.cli`` (the ``run`` command), ``hack/demo.py``.

It validates the manifest and runs the dataset preflight here (exit 2 / 3 with the one-line reason,
before any process or torch import), then starts the training processes with PyTorch's elastic
launcher API (what torchrun uses: a c10d rendezvous on a free local port, gloo on CPU), each
running ``python -m trainer JOB.yaml``. While they train it draws a progress bar from
``<output>/progress.json`` (rank 0 writes it) and, at the end, prints where the model went.
With a progress bar the processes' own logs go to ``<output>/logs/`` instead of the terminal; a
failed run prints the first failed rank's error (its last traceback lines, ``trainer.failure``).
Ctrl-C or SIGTERM: the ranks finish their step and write a checkpoint (``trainer.preemption``); the
same command resumes there. Exit code: 0, 2 / 3, the failing rank's, or ``128 + N`` for signal N.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from pathlib import Path

from kubeclip.api import EXIT_CONFIG, EXIT_PREFLIGHT, SIGNAL_EXIT_BASE, ConfigError, OutputInUse, signal_name

#: How long the launcher waits, after Ctrl-C or SIGTERM, for the ranks to finish their step and
#: write a checkpoint before it kills them (torch's default is 30 s).
SHUTDOWN_TIMEOUT_S = 300


def _progress_bar(output: str, stop: threading.Event) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trainer.metrics import read_progress

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("starting", total=None, info="")
        while not stop.wait(0.3):
            p = read_progress(output)
            if p is None:
                continue
            info = []
            if p.loss is not None:
                info.append(f"loss {p.loss:.3f}")
            if p.samplesPerSecond:
                info.append(f"{p.samplesPerSecond:.0f} samples/s")
            if p.eval.get("image_to_text_R@1") is not None:
                info.append(f"i2t R@1 {p.eval['image_to_text_R@1']:.2f}")
            bar.update(
                task,
                description=f"{p.phase} epoch {p.epoch + 1}/{p.epochs}",
                completed=p.step,
                total=p.totalSteps or None,
                info="  ".join(info),
            )
        p = read_progress(output)
        if p is not None:
            bar.update(task, description=p.phase, completed=p.step, total=p.totalSteps or None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(manifest: Path, nproc: int | None = None, output: str | None = None, quiet: bool = False) -> int:
    """Run the manifest locally; return the process exit code (0, 2, 3, or the failing rank's)."""
    from trainer.__main__ import load
    from trainer.node import claim_output
    from trainer.preflight import run_preflight
    from trainer.table import PreflightError

    try:
        job, spec = load(str(manifest), output)
    except ConfigError as err:
        print(f"config: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if nproc is not None and nproc < 1:
        print("config: --nproc must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    n = nproc or spec.numProcPerNode
    try:
        report = run_preflight(spec, world=n)
    except PreflightError as err:
        print(f"preflight: {err}", file=sys.stderr)
        return EXIT_PREFLIGHT
    summary = report.summary()
    del report  # the processes map the node's copy of the rows (trainer.rowtable)
    out = spec.output.path
    try:
        claim_output(job, spec)  # a stable local identity: local:<metadata.name>
    except OutputInUse as err:
        print(err, file=sys.stderr)
        return err.exit_code
    print(f"{summary}; starting {n} process(es), output {out}", file=sys.stderr, flush=True)

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from trainer.precision import device_refusal

    refused = device_refusal(spec.training.precision)
    if refused:
        print(f"config: {refused}", file=sys.stderr)
        return EXIT_CONFIG

    os.environ["KUBECLIP_PREFLIGHT_DONE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    run_id = f"kubeclip-{uuid.uuid4().hex[:8]}"
    logs_dir = Path(out) / "logs"
    logs = (
        DefaultLogsSpecs(log_dir=str(logs_dir), redirects=Std.ALL)
        if not quiet
        else DefaultLogsSpecs(log_dir=str(logs_dir))
    )
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
        logs_specs=logs,
        # SIGINT/SIGTERM: the ranks finish their step and write a checkpoint (trainer.preemption)
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    args = ["-m", "trainer", str(manifest)] + (["--output", output] if output else [])
    stop = threading.Event()
    bar = None
    if not quiet:
        bar = threading.Thread(target=_progress_bar, args=(out, stop), daemon=True)
        bar.start()
    rc = 0
    said: list[str] = []  # printed once the progress bar has stopped
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as err:
        # torchrun names the run's log directory <run_id>_<random>
        run_logs = next(iter(sorted(logs_dir.glob(f"{run_id}_*"))), logs_dir / run_id)
        rc, said = _failure_lines(err, run_logs)
    except (SignalException, KeyboardInterrupt) as err:  # Ctrl-C, or SIGTERM from a container runtime
        sig = int(err.sigval) if isinstance(err, SignalException) else int(signal.SIGINT)
        rc = SIGNAL_EXIT_BASE + sig
        from trainer.checkpoint import latest

        ck = latest(out)
        where = f"; the newest checkpoint is {ck}: run the same command to resume there" if ck else ""
        said = [f"stopped by {signal_name(sig)}{where}"]
    finally:
        stop.set()
        if bar is not None:
            bar.join(timeout=5)
    if rc:
        print("\n".join(said), file=sys.stderr)
        return rc
    final = Path(out) / "final"
    print(f"model: {final.resolve()}  (open_clip.create_model_and_transforms('local-dir:{final.resolve()}'))")
    metrics = final / "metrics.json"
    if metrics.is_file():
        print(f"metrics: {metrics.resolve()}")
    return 0


def _failure_lines(err, logs: Path) -> tuple[int, list[str]]:
    """The exit code and what to print: the first failed rank's cause (its last traceback lines,
    ``trainer.failure``), then where the logs are."""
    from trainer.failure import console_lines, exit_code, first_failure, killed_by

    found = first_failure(err.failures)
    if found is None:
        return 1, [f"training failed; process logs under {logs}"]
    rank, failure = found
    rc = exit_code(failure)  # killed by signal N -> 128+N, like a shell
    lines = console_lines(failure)
    sig = killed_by(failure)
    if sig is not None:
        lines.append(f"rank {rank} (pid {failure.pid}) killed by {signal_name(sig)}")
    elif not lines:  # nothing recorded (the rank died before the trainer could): its log tail
        lines = _log_tail(logs, failure.local_rank)
    return rc, [*lines, f"training failed (exit {rc}); process logs under {logs}"]


def _log_tail(root: Path, local_rank: int, lines: int = 15) -> list[str]:
    for f in sorted(root.glob(f"attempt_*/{local_rank}/stderr.log"))[:1]:
        return f.read_text(errors="replace").splitlines()[-lines:]
    return []
