"""The node-shared row table (trainer/rowtable.py): the same rows as reading the CSV whole with
pandas, in the same order for a seed, read by real forked loader workers and two ranks' samplers;
built once per node; and really shared (a forked reader dirties no pages of it).

Real CSV files with awkward content (quotes, separators inside quotes, leading spaces, non-ASCII,
absolute and relative paths, CRLF), parsed over several chunks; real ``DataLoader`` workers.
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader, Dataset

from kubeclip.api import parse_spec
from trainer import rowtable
from trainer.data import ShardedBatchSampler
from trainer.table import PreflightError, read_table


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECLIP_ROW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rowtable, "CHUNK_ROWS", 7)  # many chunks even for small files
    return tmp_path / "cache"


def spec_for(csv: Path, **dataset):
    return parse_spec(
        {
            "model": {"name": "ViT-B-32"},
            "dataset": {"trainCsv": str(csv), "captionColumn": "title", **dataset},
            "training": {"batchSize": 2},
            "output": {"path": str(csv.parent / "out")},
        }
    )


def awkward_csv(path: Path, n: int) -> None:
    lines = ["filepath,title"]
    for i in range(n):
        rel = f"/abs/dir/im{i}.jpg" if i % 5 == 0 else f"img/{i:05d}.jpg"
        caption = [
            f'"a photo, number {i}"',
            f' leading space {i} "quoted" inside',
            f'"ünïcødé 😀 {i}"',
            f'"multi\nline {i}"',
            f"plain {i}",
        ][i % 5]
        lines.append(f" {rel} ,{caption}")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))


def reference(csv: Path, sep: str = ",") -> tuple[list[str], list[str]]:
    """What read_table returned before the row table: one pandas read of the whole file."""
    df = pd.read_csv(
        csv,
        sep=sep,
        usecols=["filepath", "title"],
        dtype=str,
        keep_default_na=False,
        encoding="utf-8",
        engine="c",
        skipinitialspace=True,
    )
    base = csv.resolve().parent
    rel = df["filepath"].str.strip().to_numpy(dtype=object)
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in rel]
    return paths, list(df["title"].to_numpy(dtype=object))


def test_rows_are_those_of_a_whole_file_pandas_read(tmp_path):
    csv = tmp_path / "train.csv"
    awkward_csv(csv, 53)
    table = read_table(str(csv), spec_for(csv))
    paths, captions = reference(csv)
    assert len(table) == 53
    assert list(table.paths) == paths
    assert list(table.captions) == captions
    assert table.paths[-1] == paths[-1]
    assert table.captions[3] == captions[3]
    assert table.paths[2:9:3] == paths[2:9:3]
    assert table.separator == ","
    assert len(table.digest) == 64
    with pytest.raises(IndexError):
        table.paths[53]


def test_workers_and_ranks_read_the_same_rows_in_the_same_order_for_a_seed(tmp_path):
    """Two ranks' samplers, two forked workers each: every batch holds exactly the rows the
    in-memory arrays of a whole-file read give at the same indices."""
    csv = tmp_path / "train.csv"
    awkward_csv(csv, 80)
    table = read_table(str(csv), spec_for(csv))
    paths, captions = reference(csv)

    class Rows(Dataset):
        def __init__(self, t):
            self.t = t

        def __len__(self):
            return len(self.t)

        def __getitem__(self, key):
            _, i = key
            return i, self.t.paths[i], self.t.captions[i], os.getpid()

    for rank in range(2):
        seen = []
        sampler = ShardedBatchSampler(len(table), 4, 2, rank, seed=7)
        loader = DataLoader(Rows(table), batch_sampler=sampler, num_workers=2, collate_fn=list)
        for batch in loader:
            seen.append([row[:3] for row in batch])
            assert len({row[3] for row in batch}) == 1
            assert batch[0][3] != os.getpid()
        expected = [[(i, paths[i], captions[i]) for _, i in b] for b in ShardedBatchSampler(80, 4, 2, rank, seed=7)]
        assert seen == expected
        assert len(seen) == 10


def test_built_once_per_node_then_mapped(tmp_path, cache):
    csv = tmp_path / "train.csv"
    awkward_csv(csv, 30)
    spec = spec_for(csv)
    builds = []
    original = rowtable._Writer.finish

    def counting(self, path):
        builds.append(path)
        return original(self, path)

    rowtable._Writer.finish = counting
    try:
        tables = [None] * 4
        threads = [
            threading.Thread(target=lambda k=k: tables.__setitem__(k, read_table(str(csv), spec))) for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        rowtable._Writer.finish = original
    assert len(builds) == 2  # two columns, built by one reader; the other three mapped its files
    assert {str(t.directory) for t in tables} == {str(tables[0].directory)}
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp left behind
    # A changed CSV is another table.
    awkward_csv(csv, 31)
    assert len(read_table(str(csv), spec)) == 31


def test_a_forked_reader_dirties_no_pages_of_the_table(tmp_path):
    """Numpy object arrays of str did not stay shared with forked workers: reading a row writes
    its reference count, so the child copies the page. The mapped table is read-only bytes."""
    csv = tmp_path / "train.csv"
    n = 200_000
    pd.DataFrame(
        {"filepath": [f"img/{i:07d}.jpg" for i in range(n)], "title": [f"a caption for image {i}" for i in range(n)]}
    ).to_csv(csv, index=False)
    rowtable.CHUNK_ROWS = 50_000
    table = read_table(str(csv), spec_for(csv))
    assert len(table) == n
    old_paths, old_captions = reference(csv)
    old = [np.array(old_paths, dtype=object), np.array(old_captions, dtype=object)]  # today's form
    gc.collect()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read every row, report how much private memory that dirtied
        try:
            gc.disable()  # a collection writes to every tracked object of the parent: not the table's doing

            def dirty() -> int:
                """Private dirty KiB of anonymous mappings (the heap: where copy-on-write copies
                land). The table's files are left out: pages just written by the builder are dirty
                in the page cache until written back, which is no copy."""
                total, anon = 0, False
                with open("/proc/self/smaps") as f:
                    for line in f:
                        head = line.split()
                        if "-" in head[0] and not head[0].endswith(":"):
                            anon = len(head) < 6 or head[5].startswith("[")
                        elif anon and head[0] == "Private_Dirty:":
                            total += int(head[1])
                return total

            before = dirty()
            total = sum(len(p) + len(c) for p, c in zip(table.paths, table.captions, strict=True))
            mapped = dirty() - before
            before = dirty()
            total_old = sum(len(p) + len(c) for p, c in zip(*old, strict=True))
            os.write(w, f"{mapped} {total} {dirty() - before} {total_old}".encode())
        finally:
            os._exit(0)
    os.close(w)
    delta_kb, total, old_kb, total_old = (int(x) for x in os.read(r, 100).split())
    os.waitpid(pid, 0)
    assert total == total_old > 8_000_000  # the rows' text is ~9 MB ...
    assert old_kb > 8_000, f"numpy object arrays dirtied only {old_kb} KiB"  # ... copied by the old form
    # ... not by the table: what it dirties is the reader's own transient buffers, not the rows
    assert delta_kb < 3072, f"reading every row dirtied {delta_kb} KiB in a forked reader"


def test_a_bad_csv_publishes_nothing_and_gives_the_same_line_as_before(tmp_path, cache):
    csv = tmp_path / "train.csv"
    rows = [f"img/{i}.jpg,caption {i}" for i in range(20)]
    rows[15] = "img/15.jpg,  "  # empty caption in the third chunk: line 17 of the file
    csv.write_text("filepath,title\n" + "\n".join(rows) + "\n")
    with pytest.raises(
        PreflightError,
        match=r"1 of 20 rows have an empty 'title' \(spec.dataset.captionColumn\), first at line\(s\) 17$",
    ):
        read_table(str(csv), spec_for(csv))
    assert not any((p / "meta.json").exists() for p in cache.iterdir() if p.is_dir())


def test_pickles_as_its_directory(tmp_path):
    import pickle

    csv = tmp_path / "train.csv"
    awkward_csv(csv, 12)
    table = read_table(str(csv), spec_for(csv))
    raw = pickle.dumps(table)
    assert len(raw) < 500  # the rows do not travel through the preflight's pipe
    again = pickle.loads(raw)  # noqa: S301 - our own object
    assert list(again.captions) == list(table.captions)
    assert again.digest == table.digest


def test_without_a_writable_cache_the_rows_are_the_same_in_memory(tmp_path, monkeypatch):
    csv = tmp_path / "train.csv"
    awkward_csv(csv, 20)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("KUBECLIP_ROW_CACHE", str(blocker / "cache"))  # cannot be created
    table = read_table(str(csv), spec_for(csv))
    paths, captions = reference(csv)
    assert list(table.paths) == paths
    assert list(table.captions) == captions
    assert len(table.digest) == 64


def test_a_cache_folder_others_can_write_is_not_trusted(tmp_path, monkeypatch):
    """In a shared /tmp another user could plant tables: a folder writable by others is not used."""
    csv = tmp_path / "train.csv"
    awkward_csv(csv, 10)
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("KUBECLIP_ROW_CACHE", str(shared))
    table = read_table(str(csv), spec_for(csv))
    assert list(table.captions) == reference(csv)[1]
    assert not any(shared.iterdir())
