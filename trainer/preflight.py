"""Dataset preflight: catch a bad CSV in about a second, before any model is built.

Who uses it: ``trainer.node`` (the pod entrypoint, before it runs torchrun), ``trainer.launch``
(``kubeclip run``, before it starts processes) and ``python -m trainer`` (when nothing ran it
before). It imports pandas and PIL only, never torch, so a wrong separator fails fast instead of
after a minute of imports and model loading.

Every problem is a :class:`PreflightError` whose ``str()`` is ONE line a person can act on; the
caller exits with ``kubeclip.api.EXIT_PREFLIGHT`` and writes that line to
``/dev/termination-log``. ``docs/trainer.md`` lists each message and its fix.

:func:`read_table` is also what the data loader uses to read the CSV, so the trainer trains on
exactly the rows the preflight checked; it builds the node's shared, memory-mapped copy of them
(``trainer.rowtable``) once and every later reader maps it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from kubeclip.api import TERMINATION_MESSAGE_MAX_BYTES, Progress, TrainerSpec, termination_log_path, termination_message
from trainer import rowtable
from trainer.rowtable import RowTable

#: Separators tried when ``spec.dataset.separator`` is empty, in order of preference.
CANDIDATE_SEPARATORS = (",", "\t", ";", "|")
#: How many offending paths a message shows.
SHOW_PATHS = 3
#: Images whose header is decoded (evenly spaced over the file); existence is checked for all.
DECODE_LIMIT = 2000


class PreflightError(Exception):
    """A dataset problem the user must fix; ``str()`` is one line. Not retryable."""


def _sep_name(sep: str) -> str:
    return {"\t": "'\\t' (tab)", ",": "','", ";": "';'", "|": "'|'"}.get(sep, repr(sep))


@dataclass(frozen=True)
class Table:
    """Image paths and captions held in memory (tests, benches); what :func:`read_table` returns
    instead is a :class:`trainer.rowtable.RowTable` with the same attributes, mapped from a
    node-local cache and shared by every process of the node."""

    csv: str
    separator: str
    paths: object  # sequence of str: numpy array, list or rowtable.StringColumn
    captions: object
    digest: str = ""  # SHA-256 of the CSV's bytes, when known

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class DatasetReport:
    train: Table | RowTable
    val: Table | RowTable | None
    #: retention and zero-shot tables (``trainer.evalsets.EvalTables``), when the spec has them
    extra: object | None = None

    def summary(self) -> str:
        val = f", val {len(self.val)} rows" if self.val is not None else ", no valCsv"
        more = self.extra.summary() if self.extra is not None else ""
        return f"preflight ok: train {len(self.train)} rows (separator {_sep_name(self.train.separator)}){val}" + (
            f", {more}" if more else ""
        )


def _read_header(csv: Path, what: str) -> str:
    try:
        with open(csv, "rb") as f:
            raw = f.readline()
    except FileNotFoundError:
        raise PreflightError(f"{what} {csv}: file not found") from None
    except IsADirectoryError:
        raise PreflightError(f"{what} {csv}: is a directory, expected a CSV file") from None
    except OSError as err:
        raise PreflightError(f"{what} {csv}: cannot read: {err.strerror}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise PreflightError(
            f"{what} {csv}: not UTF-8 (byte 0x{raw[err.start]:02x} in the header line); re-save the file as UTF-8"
        ) from None


def _split_header(header: str, sep: str) -> list[str]:
    return [c.strip().strip('"') for c in header.split(sep)]


def detect_separator(header: str, wanted: tuple[str, ...]) -> str | None:
    """The separator that splits the header into all ``wanted`` columns, else the most frequent one."""
    for sep in CANDIDATE_SEPARATORS:
        if set(wanted) <= set(_split_header(header, sep)):
            return sep
    counts = {sep: header.count(sep) for sep in CANDIDATE_SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else None


def read_table(csv: str, spec: TrainerSpec, what: str = "spec.dataset.trainCsv") -> RowTable:
    """Read and check one CSV: separator, columns, encoding, empty rows. Images are not touched.
    The rows come back as a :class:`trainer.rowtable.RowTable`, built once per node and mapped by
    every process (see that module)."""
    ds = spec.dataset
    path = Path(csv)
    header = _read_header(path, what)
    if not header.strip():
        raise PreflightError(
            f"{what} {path}: empty file (expected a header line with '{ds.imageColumn}' and '{ds.captionColumn}')"
        )
    wanted = (ds.imageColumn, ds.captionColumn)
    sep = ds.separator or detect_separator(header, wanted) or ","
    columns = _split_header(header, sep)
    missing = [c for c in wanted if c not in columns]
    if missing:
        likely = detect_separator(header, wanted)
        fits = likely is not None and set(wanted) <= set(_split_header(header, likely))
        if fits and likely != sep:
            hint = f"; the header splits into these columns with separator {_sep_name(likely)}: set spec.dataset.separator to it (or leave it empty to detect)"
        else:
            hint = (
                f"; set spec.dataset.imageColumn/captionColumn to the right names"
                f" (likely separator {_sep_name(likely) if likely else 'none found'})"
            )
        keys = " and ".join(
            f"'{c}' (spec.dataset.{'imageColumn' if c == ds.imageColumn else 'captionColumn'})" for c in missing
        )
        raise PreflightError(
            f"{what} {path}: column {keys} not found with separator {_sep_name(sep)}; columns found: {columns}{hint}"
        )
    base = str(Path(ds.root) if ds.root else path.resolve().parent)
    settings = {"separator": sep, "columns": list(wanted), "base": base}
    return rowtable.load_or_build(path, settings, base, lambda: _checked_chunks(path, sep, wanted, what))


def _checked_chunks(path: Path, sep: str, wanted: tuple[str, str], what: str):
    """``(stripped image paths, captions)`` per chunk of rows, from the same ``pd.read_csv`` call as
    reading the file whole; raises :class:`PreflightError` (bad encoding, malformed CSV, no rows,
    empty values) after the whole file is read, with the same counts and lines as before."""
    import numpy as np
    import pandas as pd

    image_col, caption_col = wanted
    rows = 0
    empty: dict[str, list[int]] = {image_col: [], caption_col: []}
    empty_count = {image_col: 0, caption_col: 0}
    try:
        with pd.read_csv(
            path,
            sep=sep,
            usecols=list(wanted),
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
            engine="c",
            skipinitialspace=True,
            chunksize=rowtable.CHUNK_ROWS,
        ) as reader:
            for df in reader:
                stripped = df[image_col].str.strip().to_numpy(dtype=object)
                captions = df[caption_col].to_numpy(dtype=object)
                for col, values in ((image_col, stripped), (caption_col, df[caption_col].str.strip().to_numpy())):
                    at = np.flatnonzero(values == "")
                    empty_count[col] += len(at)
                    empty[col].extend(int(i) + rows for i in at[: SHOW_PATHS - len(empty[col])])
                rows += len(df)
                yield stripped, captions
    except UnicodeDecodeError as err:
        raise PreflightError(
            f"{what} {path}: not UTF-8 ({err.reason} at byte {err.start}); re-save the file as UTF-8"
        ) from None
    except pd.errors.ParserError as err:
        raise PreflightError(
            f"{what} {path}: malformed CSV with separator {_sep_name(sep)}: {str(err).strip().splitlines()[-1]}"
        ) from None
    except pd.errors.EmptyDataError:
        raise PreflightError(f"{what} {path}: empty file") from None
    if rows == 0:
        raise PreflightError(f"{what} {path}: the header is there but the dataset has no rows")
    for col, key in ((image_col, "imageColumn"), (caption_col, "captionColumn")):
        if empty_count[col]:
            lines = ", ".join(str(i + 2) for i in empty[col])
            raise PreflightError(
                f"{what} {path}: {empty_count[col]} of {rows} rows have an empty '{col}' (spec.dataset.{key}), first at line(s) {lines}"
            )


def check_images(table: Table | RowTable, what: str) -> None:
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
    from trainer import evalsets  # retention and zero-shot CSVs: same rules, same one-line errors

    return DatasetReport(train=train, val=val, extra=evalsets.read(spec, images=True))


def write_termination_log(message: str, path: str) -> None:
    """Kubernetes shows this file's content in the pod status; write it only where it exists."""
    if os.path.exists(path):
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(message.encode("utf-8")[:TERMINATION_MESSAGE_MAX_BYTES].decode("utf-8", errors="ignore"))
        except OSError:
            pass


def fail(line: str, code: int, *, echo: bool = True, progress: Progress | None = None, overwrite: bool = True) -> int:
    """End a run on a one-line error: stderr (when ``echo``), the pod's termination log (followed by
    rank 0's final ``progress`` when given), exit code. ``overwrite=False``: leave a termination log
    that another process of the container wrote already (rank 0's verdict with its progress)."""
    if echo:
        print(line, file=sys.stderr)
    path = termination_log_path()
    if overwrite or not _has_content(path):
        write_termination_log(termination_message(line, progress), path)
    return code


def _has_content(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def read_tables(spec: TrainerSpec) -> DatasetReport:
    """The tables only, without the image checks (a launcher ran the full preflight already)."""
    from trainer import evalsets

    val = read_table(spec.dataset.valCsv, spec, "spec.dataset.valCsv") if spec.dataset.valCsv else None
    return DatasetReport(
        train=read_table(spec.dataset.trainCsv, spec), val=val, extra=evalsets.read(spec, images=False)
    )


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
        self._pid = os.fork()
        if self._pid == 0:  # the child: check, report, exit without running any parent cleanup
            os.close(self._read)
            try:
                report = read_tables(spec) if tables_only else run_preflight(spec)
                payload = ("ok", report)
            except PreflightError as err:
                payload = ("failed", f"preflight: {err}")
            except BaseException as err:
                payload = ("error", f"{type(err).__name__}: {err}")
            if payload[0] == "failed":
                if announce:
                    print(payload[1], file=sys.stderr, flush=True)
                write_termination_log(payload[1], termination_log)
                os.kill(os.getppid(), signal.SIGUSR1)
            with os.fdopen(write, "wb") as f:
                f.write(pickle.dumps(payload))
            os._exit(0)
        os.close(write)
        signal.signal(signal.SIGUSR1, lambda *_: os._exit(exit_code))

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
