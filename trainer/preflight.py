"""Dataset preflight: catch a bad CSV in about a second, before any model is built.

Who uses it: ``trainer.node`` (the pod entrypoint, before it runs torchrun), ``trainer.launch``
(``kubeclip run``, before it starts processes) and ``python -m trainer`` (when nothing ran it
before). It imports pandas and PIL only, never torch, so a wrong separator fails fast instead of
after a minute of imports and model loading.

What it holds: the checks. The CSVs are read by ``trainer.table`` (separator, columns, encoding,
empty cells) and the retention and zero-shot CSVs by ``trainer.evalsets``; here come the checks
that are not about reading a CSV (every image exists, a sample decodes, the model and the output
are usable, one optimizer step's worth of rows) and :class:`DatasetReport`, the checked tables
the run then trains on. Every problem is a :class:`trainer.table.PreflightError` whose ``str()``
is ONE line a person can act on; the caller exits with ``kubeclip.api.EXIT_PREFLIGHT`` and writes
that line to ``/dev/termination-log`` (``trainer.exits``). ``docs/trainer.md`` lists each message
and its fix.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kubeclip.api import TrainerSpec
from trainer import evalsets
from trainer.evalsets import EvalTables
from trainer.exits import write_termination_log
from trainer.table import SHOW_PATHS, PreflightError, Rows, read_table, separator_name

#: Images whose header is decoded (evenly spaced over the file); existence is checked for all.
DECODE_LIMIT = 2000


@dataclass(frozen=True)
class DatasetReport:
    """The checked tables of a run: what ``trainer.train`` trains and evaluates on."""

    train: Rows
    val: Rows | None
    #: retention and zero-shot tables, when the spec has them
    eval_sets: EvalTables = field(default_factory=EvalTables)

    def summary(self) -> str:
        val = f", val {len(self.val)} rows" if self.val is not None else ", no valCsv"
        more = self.eval_sets.summary()
        return f"preflight ok: train {len(self.train)} rows (separator {separator_name(self.train.separator)}){val}" + (
            f", {more}" if more else ""
        )


def check_images(table: Rows, what: str) -> None:
    """Every image must exist; a spread sample of them must open as an image (header decode)."""
    from PIL import Image, UnidentifiedImageError

    missing = [p for p in table.paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:SHOW_PATHS])
        raise PreflightError(
            f"{what} {table.csv}: {len(missing)} of {len(table)} images not found (relative paths resolve against "
            f"spec.dataset.root, else the CSV's directory), first: {shown}"
        )
    n = len(table)
    stride = max(1, n // DECODE_LIMIT)
    bad = []
    for p in table.paths[::stride]:
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018 - parses the header
        except (UnidentifiedImageError, OSError, ValueError):
            bad.append(p)
    if bad:
        checked = len(table.paths[::stride])
        raise PreflightError(
            f"{what} {table.csv}: {len(bad)} of {checked} checked images cannot be read as images, first: {', '.join(bad[:SHOW_PATHS])}"
        )


def _check_model(spec: TrainerSpec) -> None:
    name = spec.model.name
    if name.startswith("local-dir:"):
        d = Path(name[len("local-dir:") :])
        if not (d / "open_clip_config.json").is_file():
            raise PreflightError(f"spec.model.name {name}: no open_clip_config.json in {d}")
    pre = spec.model.pretrained
    looks_like_path = "/" in pre or pre.endswith((".safetensors", ".pt", ".pth", ".bin"))
    if pre and looks_like_path and not os.path.isfile(pre):
        raise PreflightError(f"spec.model.pretrained {pre}: file not found")


def _check_output(spec: TrainerSpec) -> None:
    out = Path(spec.output.path)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise PreflightError(f"spec.output.path {out}: not writable (checked {probe})")
    check_free_space(out, probe)


#: Free space the output filesystem needs at least, even before the first checkpoint exists.
MIN_FREE_BYTES = 1 << 30


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_free_space(out: Path, probe: Path, need: int | None = None) -> None:
    """Enough free space on ``out``'s filesystem (``probe``: its nearest existing ancestor) for the
    next checkpoint: twice the newest checkpoint's size (the temporary file lives beside the
    committed one until the rename), and never less than :data:`MIN_FREE_BYTES`. A full disk
    found now is one line; found at the first checkpoint it is an hour of lost training."""
    if need is None:
        need = MIN_FREE_BYTES
        ckpts = sorted((out / "checkpoints").glob("step-*.pt")) if (out / "checkpoints").is_dir() else []
        if ckpts:
            need = max(need, 2 * ckpts[-1].stat().st_size)
    try:
        st = os.statvfs(probe)
    except OSError:
        return  # the writability check above already spoke for this path
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise PreflightError(
            f"spec.output.path {out}: only {_human(free)} free on its filesystem, "
            f"checkpoints need at least {_human(need)}; free space or use a larger volume"
        )


def world_size(spec: TrainerSpec) -> int:
    """The number of training processes: torchrun's WORLD_SIZE when set, else the spec's topology."""
    env = os.environ.get("WORLD_SIZE")
    return int(env) if env else spec.numNodes * spec.numProcPerNode


def run_preflight(spec: TrainerSpec, world: int | None = None) -> DatasetReport:
    """All checks, cheapest first. Raises :class:`PreflightError`; returns the checked tables."""
    world = world or world_size(spec)
    _check_model(spec)
    _check_output(spec)
    train = read_table(spec.dataset.trainCsv, spec, "spec.dataset.trainCsv")
    t = spec.training
    global_batch = t.batchSize * world
    if len(train) < global_batch * t.gradAccumSteps:
        raise PreflightError(
            f"spec.dataset.trainCsv {train.csv}: {len(train)} rows, fewer than one optimizer step needs "
            f"(batchSize {t.batchSize} x {world} processes x gradAccumSteps {t.gradAccumSteps} = "
            f"{global_batch * t.gradAccumSteps}); lower spec.training.batchSize or add data"
        )
    val = None
    if spec.dataset.valCsv:
        val = read_table(spec.dataset.valCsv, spec, "spec.dataset.valCsv")
    check_images(train, "spec.dataset.trainCsv")
    if val is not None:
        check_images(val, "spec.dataset.valCsv")
    eval_sets = evalsets.read(spec)  # retention and zero-shot CSVs: same rules, same one-line errors
    if eval_sets.retention is not None:
        check_images(eval_sets.retention, evalsets.RETENTION)
    if eval_sets.zeroshot is not None:
        check_images(eval_sets.zeroshot, evalsets.ZEROSHOT)
    return DatasetReport(train=train, val=val, eval_sets=eval_sets)


def read_tables(spec: TrainerSpec) -> DatasetReport:
    """The tables only, without the image checks (a launcher ran the full preflight already)."""
    val = read_table(spec.dataset.valCsv, spec, "spec.dataset.valCsv") if spec.dataset.valCsv else None
    return DatasetReport(train=read_table(spec.dataset.trainCsv, spec), val=val, eval_sets=evalsets.read(spec))


class BackgroundPreflight:
    """Run the preflight in a forked child while this process imports torch and open_clip.

    Who uses it: ``python -m trainer`` (every torchrun rank). pandas' import and the image checks
    take about as long as a second core needs to do them, and torch's import is seconds of
    single-threaded work, so on a 2-core machine the two overlap almost completely. A bad dataset
    still ends the run within about a second: the child prints the one line, writes
    ``/dev/termination-log`` and signals the parent (SIGUSR1), whose handler exits with
    ``EXIT_PREFLIGHT`` wherever it is in its imports. On success the child sends the checked
    tables back through a pipe (row tables pickle as their cache folder: the rows do not travel).

    Fork happens before torch is imported (no threads yet), so it is safe.
    """

    def __init__(self, spec: TrainerSpec, *, tables_only: bool, announce: bool, exit_code: int, termination_log: str):
        import pickle
        import signal

        self._read, write = os.pipe()
        # The handler is in place before the fork: a child that fails at once (a small table, a
        # parent slow to be scheduled) must not find SIGUSR1's default action, which kills us (-10)
        signal.signal(signal.SIGUSR1, lambda *_: os._exit(exit_code))
        self._pid = os.fork()
        if self._pid == 0:  # the child: check, report, exit without running any parent cleanup
            os.close(self._read)
            payload: tuple[str, DatasetReport | str]
            try:
                payload = ("ok", read_tables(spec) if tables_only else run_preflight(spec))
            except PreflightError as err:
                payload = ("failed", f"preflight: {err}")
            except BaseException as err:
                payload = ("error", f"{type(err).__name__}: {err}")
            if payload[0] == "failed":
                line = str(payload[1])
                if announce:
                    print(line, file=sys.stderr, flush=True)
                write_termination_log(line, termination_log)
                os.kill(os.getppid(), signal.SIGUSR1)
            with os.fdopen(write, "wb") as f:
                f.write(pickle.dumps(payload))
            os._exit(0)
        os.close(write)

    def result(self) -> DatasetReport:
        """Wait for the child; return its tables, or raise what it found."""
        import pickle
        import signal

        with os.fdopen(self._read, "rb") as f:
            data = f.read()
        os.waitpid(self._pid, 0)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        if not data:
            raise RuntimeError("the preflight process died without a result")
        kind, value = pickle.loads(data)  # noqa: S301 - our own forked child's result, over our own pipe
        if kind == "failed":  # the SIGUSR1 normally ended us already; this is the fallback
            raise PreflightError(value[len("preflight: ") :])
        if kind == "error":
            raise RuntimeError(f"preflight crashed: {value}")
        return value
