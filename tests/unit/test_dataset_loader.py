"""examples/dataset-pvc.yaml's loader script, run as shipped (taken out of the YAML) on tarballs
served from 127.0.0.1: a good dataset is unpacked and its CSVs counted; an archive with a member
outside the destination, a link or a device is refused whole with one line; a bad URL is one line.

It runs under this venv's Python (which has tarfile's "data" filter) and, where the machine has one,
the system's /usr/bin/python3 (Debian bookworm's 3.11.2, the Python of the local base image, which
has none): the example must behave the same on both.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PYTHONS = {"venv": sys.executable, **({"system": "/usr/bin/python3"} if os.path.exists("/usr/bin/python3") else {})}


def loader_script() -> str:
    docs = yaml.safe_load_all((REPO / "examples/dataset-pvc.yaml").read_text())
    pod = next(d for d in docs if d["kind"] == "Pod")
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    return command[2]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A directory served over HTTP on 127.0.0.1 (a free port); yields (dir, base URL)."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(_Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def _kind(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    return info, None


TRAIN = b"filepath,title\nimages/a.png,a red circle\nimages/b.png,a blue square\n"
VAL = b"filepath,title\nimages/a.png,a red circle\n"


def _load(python: str, url: str, dest: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATASET_URL": url, "DATASET_DIR": str(dest)}
    return subprocess.run([python, "-c", loader_script()], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("python", PYTHONS.values(), ids=PYTHONS.keys())
def test_a_dataset_tarball_is_unpacked_and_its_csvs_counted(python, served, tmp_path):
    root, base = served
    folder = _kind("images", tarfile.DIRTYPE)
    folder[0].mode = 0o755
    _tarball(
        root / "good.tar.gz",
        [_file("train.csv", TRAIN), _file("val.csv", VAL), folder, _file("images/a.png", b"\x89PNG-a")],
    )
    dest = tmp_path / "data" / "penguins"
    proc = _load(python, f"{base}/good.tar.gz", dest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{dest / 'train.csv'} 2 rows", f"{dest / 'val.csv'} 1 rows"], proc.stdout
    assert (dest / "train.csv").read_bytes() == TRAIN
    assert (dest / "images/a.png").read_bytes() == b"\x89PNG-a"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["penguins"]  # the download is gone


#: The second member of each is refused (an absolute path is made inside the test's tmp_path).
BAD = {
    "parent": lambda tmp: [_file("train.csv", TRAIN), _file("../escape", b"owned")],
    "absolute": lambda tmp: [_file("train.csv", TRAIN), _file(str(tmp / "escape-abs"), b"owned")],
    "symlink": lambda tmp: [_file("train.csv", TRAIN), _kind("link", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": lambda tmp: [_file("train.csv", TRAIN), _kind("hard", tarfile.LNKTYPE, "train.csv")],
    "device": lambda tmp: [_file("train.csv", TRAIN), _kind("null", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("python", PYTHONS.values(), ids=PYTHONS.keys())
@pytest.mark.parametrize("case", BAD, ids=BAD.keys())
def test_a_malicious_archive_is_refused_whole_with_one_line(python, case, served, tmp_path):
    root, base = served
    members = BAD[case](tmp_path)
    _tarball(root / f"{case}-{python.replace('/', '_')}.tar.gz", members)
    url = f"{base}/{case}-{python.replace('/', '_')}.tar.gz"
    dest = tmp_path / "data" / "penguins"
    proc = _load(python, url, dest)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"dataset: {url}: refused member {members[1][0].name!r}"), line
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in dest.parent.iterdir()) == ["penguins"]
    assert not (tmp_path / "data" / "escape").exists()
    assert not (tmp_path / "escape-abs").exists()


@pytest.mark.parametrize("python", PYTHONS.values(), ids=PYTHONS.keys())
def test_a_missing_download_or_a_non_tarball_is_one_line(python, served, tmp_path):
    root, base = served
    (root / "not-a-tarball.tar.gz").write_bytes(b"<html>moved</html>")
    for what, expect in (("missing.tar.gz", "HTTP Error 404"), ("not-a-tarball.tar.gz", "not a gzip file")):
        proc = _load(python, f"{base}/{what}", tmp_path / what / "penguins")
        (line,) = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, line
        assert line.startswith(f"dataset: {base}/{what}: "), line
        assert expect in line, line
