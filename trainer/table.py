"""The CSV table reader: a dataset CSV's image paths and captions, checked row by row.

Who uses it: every part of the trainer that reads a CSV of the spec (train, val, retention and
zero-shot): ``trainer.preflight`` (which adds the checks that are not about reading: images,
model, output), ``trainer.evalsets``, and through the tables it returns the data loaders of
``trainer.data`` and ``trainer.gpu_data``, ``trainer.zeroshot`` and ``trainer.checkpoint``.

Why it exists on its own: the loaders and the preflight both need the reader, and the preflight's
checks need the eval sets, which need the reader; with the reader here nothing imports in a
circle. It imports pandas and numpy, never torch (import-linter checks it), so a wrong separator
fails in about a second, before any model is built.

Every problem is a :class:`PreflightError` whose ``str()`` is ONE line a person can act on
(``docs/trainer.md`` lists each message and its fix). The rows come back as a
:class:`trainer.rowtable.RowTable`, built once per node and mapped by every process, so the
trainer trains on exactly the rows the preflight checked; without a writable row cache they are
held in memory as a :class:`Table`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

from kubeclip.api import TrainerSpec
from trainer import rowtable
from trainer.rowtable import RowTable

#: Separators tried when ``spec.dataset.separator`` is empty, in order of preference.
CANDIDATE_SEPARATORS = (",", "\t", ";", "|")
#: How many offending rows or paths a message shows.
SHOW_PATHS = 3

log = logging.getLogger(__name__)


class PreflightError(Exception):
    """A dataset problem the user must fix; ``str()`` is one line. Not retryable (exit 3)."""


class Column(Protocol):
    """One column of a table: ``len()``, ``column[i]`` -> str, slices, iteration. A numpy object
    array, a list, or :class:`trainer.rowtable.StringColumn`."""

    def __len__(self) -> int: ...
    def __getitem__(self, key: Any, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True)
class Table:
    """Image paths and captions held in memory (tests, benches, a node without a writable row
    cache); what :func:`read_table` returns otherwise is a :class:`trainer.rowtable.RowTable`
    with the same attributes, mapped from a node-local cache and shared by every process."""

    csv: str
    separator: str
    paths: Column  # absolute image paths
    captions: Column
    digest: str = ""  # SHA-256 of the CSV's bytes, when known

    def __len__(self) -> int:
        return len(self.paths)


#: What a reader returns and a loader takes: the rows of one checked CSV.
Rows: TypeAlias = Table | RowTable


def separator_name(sep: str) -> str:
    """A separator as the messages name it (``'\\t' (tab)``)."""
    return {"\t": "'\\t' (tab)", ",": "','", ";": "';'", "|": "'|'"}.get(sep, repr(sep))


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


def read_table(csv: str, spec: TrainerSpec, what: str = "spec.dataset.trainCsv") -> Rows:
    """Read and check one CSV: separator, columns, encoding, empty rows. Images are not touched.
    The rows come back as a :class:`trainer.rowtable.RowTable`, built once per node and mapped by
    every process (see that module), or as a :class:`Table` where no row cache can be written."""
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
        if likely is not None and likely != sep and set(wanted) <= set(_split_header(header, likely)):
            hint = (
                f"; the header splits into these columns with separator {separator_name(likely)}: "
                "set spec.dataset.separator to it (or leave it empty to detect)"
            )
        else:
            hint = (
                f"; set spec.dataset.imageColumn/captionColumn to the right names"
                f" (likely separator {separator_name(likely) if likely else 'none found'})"
            )
        keys = " and ".join(
            f"'{c}' (spec.dataset.{'imageColumn' if c == ds.imageColumn else 'captionColumn'})" for c in missing
        )
        raise PreflightError(
            f"{what} {path}: column {keys} not found with separator {separator_name(sep)}; columns found: {columns}{hint}"
        )
    base = str(Path(ds.root) if ds.root else path.resolve().parent)
    settings = {"separator": sep, "columns": list(wanted), "base": base}

    def chunks() -> Iterator[tuple[Any, Any]]:
        return _checked_chunks(path, sep, wanted, what)

    try:
        root = rowtable.open_cache()
    except OSError as err:  # a read-only /tmp: the rows stay in this process (not shared)
        log.warning(
            "row cache %s not writable (%s): holding %s in memory", rowtable.cache_root(), err.strerror or err, path
        )
        return _in_memory(path, sep, base, chunks())
    return rowtable.load_or_build(root, path, settings, base, chunks)


def _in_memory(csv: Path, sep: str, base: str, chunks: Iterator[tuple[Any, Any]]) -> Table:
    """The fallback without a writable row cache: the same rows as numpy object arrays."""
    import numpy as np

    rel: list[str] = []
    cap: list[str] = []
    for r, c in chunks:
        rel.extend(r)
        cap.extend(c)
    paths = np.array([p if os.path.isabs(p) else os.path.join(base, p) for p in rel], dtype=object)
    return Table(str(csv), sep, paths, np.array(cap, dtype=object), digest=rowtable.sha256_of(csv))


def _checked_chunks(path: Path, sep: str, wanted: tuple[str, str], what: str) -> Iterator[tuple[Any, Any]]:
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
            f"{what} {path}: malformed CSV with separator {separator_name(sep)}: {str(err).strip().splitlines()[-1]}"
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
