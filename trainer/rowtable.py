"""A CSV's rows in a compact, memory-mapped form that every process of a node shares.

Who uses it: ``trainer.table.read_table`` (every CSV the trainer reads: train, val, retention,
zero-shot), and through it the data loaders of ``trainer.data`` and ``trainer.gpu_data``.

Why it exists: one million rows held as numpy object arrays cost ~490 MiB per process (issue 21), and they
are not shared with forked loader workers (touching a Python string writes its reference count,
so every page a worker reads is copied). Here a table is four files in a node-local cache
directory: the image paths as they appear in the CSV (stripped) and the captions, each as UTF-8
bytes back to back plus an array of offsets. Every process maps them read-only (``mmap``):
the kernel keeps one copy in its page cache for the ranks and their workers together, nothing is
written on access, and a row costs its bytes plus two offsets.

Read once per node: the first process to need a table builds it under an exclusive lock
(``flock``) and publishes it with an atomic rename; the others wait for the lock and map the
result. ``trainer.node`` (in a pod) and ``kubeclip run`` build it during their preflight, so the
training processes only map it. The CSV is parsed in chunks by the same pandas call as before
(``pd.read_csv``, C engine, the same options), so the rows, their order and the preflight's
messages are those of reading it whole; only one chunk's Python strings exist at a time.

The cache: ``$KUBECLIP_ROW_CACHE``, else ``<tmp>/kubeclip-rows-<uid>``; where it cannot be
written (a read-only root filesystem) :func:`open_cache` raises and the reader holds the rows in
memory per process, as before, with a warning (``trainer.table.Table``). An entry is keyed by the
CSV's real path, size, mtime and inode, the columns, separator and root it was read with, and this
format's version; a changed CSV gets a new entry. Each table also carries the SHA-256 of the
CSV's bytes (:attr:`RowTable.digest`): the dataset identity in checkpoint fingerprints
(``trainer.checkpoint.dataset_identity``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import mmap
import operator
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Bumped whenever the files' layout changes: old entries are then simply not found.
FORMAT = 1
#: Rows parsed per pandas chunk: bounds the Python strings alive while building (~10 MB).
CHUNK_ROWS = 100_000


def cache_root() -> Path:
    env = os.environ.get("KUBECLIP_ROW_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"kubeclip-rows-{os.getuid()}"


class StringColumn:
    """``column[i]`` -> str, decoded from mapped bytes; slices give lists; iterable; ``len()``.

    ``base``: a directory joined to every relative value (image paths resolve against the
    dataset root, else the CSV's directory), exactly as the preflight always resolved them.
    ``blob`` is an ``mmap`` (slicing it gives bytes without any numpy object in between: ~1 us a
    row); iteration decodes a block of rows per offsets read.
    """

    _BLOCK = 4096

    def __init__(self, blob: Any, offsets: np.ndarray, base: str | None = None):
        self._blob, self._off = blob, offsets
        # os.path.join(base, s) for a relative s, written out (POSIX): it is most of a row's cost.
        self._prefix = None if base is None else (base if base.endswith("/") else base + "/")
        self._n = len(offsets) - 1

    def __len__(self) -> int:
        return self._n

    def _value(self, raw: bytes) -> str:
        s = raw.decode("utf-8")
        if self._prefix is None or s.startswith("/"):
            return s
        return self._prefix + s

    def _get(self, i: int) -> str:
        return self._value(self._blob[int(self._off[i]) : int(self._off[i + 1])])

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return [self._get(i) for i in range(*key.indices(self._n))]
        i = operator.index(key)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"row {key} out of range ({self._n} rows)")
        return self._get(i)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, self._n, self._BLOCK):
            off = self._off[start : min(self._n, start + self._BLOCK) + 1].tolist()
            block = self._blob[off[0] : off[-1]]
            first, prefix = off[0], self._prefix
            if not block.isascii():
                for a, b in itertools.pairwise(off):
                    yield self._value(block[a - first : b - first])
                continue
            text = block.decode("ascii")  # ASCII: byte offsets are character offsets
            for a, b in itertools.pairwise(off):
                s = text[a - first : b - first]
                yield s if prefix is None or s.startswith("/") else prefix + s


class RowTable:
    """One checked CSV, mapped: ``paths`` (absolute image paths) and ``captions`` as
    :class:`StringColumn`; pickles as its directory (a receiver maps the same files)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        meta = json.loads((self.directory / "meta.json").read_text(encoding="utf-8"))
        self.csv: str = meta["csv"]
        self.separator: str = meta["separator"]
        self.digest: str = meta["sha256"]
        self.paths = StringColumn(*self._column("paths"), base=meta["base"])
        self.captions = StringColumn(*self._column("captions"))

    def _column(self, name: str) -> tuple[Any, np.ndarray]:
        # A plain ndarray view of the mapped offsets: indexing an np.memmap subclass is ~10x slower.
        offsets = np.load(self.directory / f"{name}.off.npy", mmap_mode="r").view(np.ndarray)
        with open(self.directory / f"{name}.bin", "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:  # mmap cannot map an empty file
                return b"", offsets
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), offsets

    def __len__(self) -> int:
        return len(self.captions)

    def __reduce__(self):
        return (RowTable, (str(self.directory),))


def _key(csv: Path, settings: dict[str, Any]) -> str:
    st = os.stat(csv)
    ident = {
        "format": FORMAT,
        "csv": os.path.realpath(csv),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
        **settings,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def sha256_of(csv: Path) -> str:
    """The SHA-256 of a file's bytes, as hex (a table's :attr:`RowTable.digest`)."""
    with open(csv, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Writer:
    """Appends one column's values as UTF-8 bytes to a blob file and records their lengths."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115 (held across append() calls; closed in finish() or by load_or_build)
        self.lengths: list[np.ndarray] = []

    def add(self, values: Any) -> None:
        encoded = [v.encode("utf-8") for v in values]
        self.lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        self.file.write(b"".join(encoded))

    def finish(self, offsets_path: Path) -> None:
        self.file.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        dtype = np.uint32 if offsets[-1] < 2**32 else np.int64
        np.save(offsets_path, offsets.astype(dtype))


def open_cache() -> Path:
    """The row cache directory, created when missing; raises :class:`OSError` when it cannot be
    written or cannot be trusted (the caller then holds the rows in memory)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.stat(root)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:  # in a shared /tmp, someone else's folder
        raise PermissionError(13, "not owned by this user, or writable by others")
    if not os.access(root, os.W_OK):
        raise PermissionError(13, "not writable")
    return root


def load_or_build(
    root: Path,
    csv: Path,
    settings: dict[str, Any],
    base: str,
    chunks: Callable[[], Iterator[tuple[Any, Any]]],
) -> RowTable:
    """Map the cached table of ``csv`` read with ``settings`` (in ``root``, from :func:`open_cache`);
    build it first when missing.

    ``chunks()`` yields ``(image paths, captions)`` sequences of str chunk by chunk (the caller's
    parser and checks; whatever it raises propagates and nothing is published). ``base`` is
    joined to relative image paths on access.
    """
    key = _key(csv, settings)
    final = root / key
    if (final / "meta.json").is_file():
        return RowTable(final)
    with open(root / f"{key}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per node; the others wait, then map
        try:
            if (final / "meta.json").is_file():
                return RowTable(final)
            tmp = root / f".{key}.tmp-{secrets.token_hex(8)}"
            tmp.mkdir(mode=0o700)
            try:
                paths, captions = _Writer(tmp / "paths.bin"), _Writer(tmp / "captions.bin")
                with contextlib.ExitStack() as stack:
                    stack.callback(paths.file.close)
                    stack.callback(captions.file.close)
                    for rel, cap in chunks():
                        paths.add(rel)
                        captions.add(cap)
                paths.finish(tmp / "paths.off.npy")
                captions.finish(tmp / "captions.off.npy")
                meta = {"csv": str(csv), "separator": settings["separator"], "base": base, "sha256": sha256_of(csv)}
                (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
                try:
                    os.rename(tmp, final)
                except OSError:  # published meanwhile by a process that does not share our lock
                    if not (final / "meta.json").is_file():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return RowTable(final)
