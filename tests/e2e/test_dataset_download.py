"""examples/dataset-pvc.yaml's download mode on the real node: the loader pod fetches a dataset
tarball over HTTP and unpacks it into its claim.

Who uses it: ``make e2e``. The tarball is the e2e dataset (``dataset_dir``) packed by the test and
served by this process from an address inside the cluster's own network namespace (the node IP
``10.250.0.2`` in ``kubeclip``, bound through ``devkit.netns.call_in``): the pod reaches it over
the pod bridge like any in-cluster server, and nothing listens in the machine's own network. The
loader runs on the local base image (Debian bookworm's Python 3.11.2, which has no tarfile
extraction filters): the example's own member checks are what keep the unpacking safe there.
"""

from __future__ import annotations

import functools
import http.server
import tarfile
import threading

import pytest
from e2e_helpers import dataset_pvc, pv_dir

from devkit import netns
from devkit.node import NAME, NODE_IP
from devkit.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def served_in_cluster(tmp_path, dataset_dir):
    """``http://10.250.0.2:<port>/penguins.tar.gz``: the dataset folder's contents, packed."""
    root = tmp_path / "www"
    root.mkdir()
    with tarfile.open(root / "penguins.tar.gz", "w:gz") as tar:
        for child in sorted(dataset_dir.iterdir()):
            tar.add(child, arcname=child.name)
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    # the listening socket is created in the cluster's namespace; the thread serving it may be anywhere
    srv = netns.call_in(
        NAME, lambda: http.server.ThreadingHTTPServer((NODE_IP, 0), functools.partial(Handler, directory=str(root)))
    )
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://{NODE_IP}:{srv.server_address[1]}/penguins.tar.gz", served
    srv.shutdown()
    srv.server_close()


def test_download_mode_unpacks_the_tarball_into_the_claim(kube, namespace, dataset_dir, served_in_cluster):
    url, served = served_in_cluster
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=dataset_pvc(url))

    def phase() -> str:
        return kube.kubectl(
            "-n", namespace, "get", "pod", "dataset-loader", "-o", "jsonpath={.status.phase}", check=False
        ).stdout

    explain = lambda: "\n---\n".join(  # noqa: E731
        kube.kubectl("-n", namespace, *args, check=False).stdout
        for args in (("describe", "pod", "dataset-loader"), ("logs", "dataset-loader"))
    )
    wait_for(lambda: phase() in ("Succeeded", "Failed"), 240, "dataset-loader finished", explain=explain, every_s=1)
    log = kube.kubectl("-n", namespace, "logs", "dataset-loader").stdout
    assert phase() == "Succeeded", explain()
    assert served == ["/penguins.tar.gz"], served
    # the loader's log lists every CSV with its row count (the header line not counted)
    csvs = sorted(dataset_dir.rglob("*.csv"))
    assert len(csvs) >= 3, csvs  # train.csv, val.csv, bad.csv
    for csv in csvs:
        with csv.open(encoding="utf-8") as f:
            rows = sum(1 for _ in f) - 1
        assert f"/data/penguins/{csv.relative_to(dataset_dir)} {rows} rows" in log, log
    # the files are on the volume, as the pod's user (uid 1000), byte for byte
    on_pv = pv_dir(kube, namespace) / "penguins"
    local = sorted(p.relative_to(dataset_dir) for p in dataset_dir.rglob("*") if p.is_file())
    assert sorted(p.relative_to(on_pv) for p in on_pv.rglob("*") if p.is_file()) == local
    for rel in local:
        assert (on_pv / rel).read_bytes() == (dataset_dir / rel).read_bytes(), rel
    assert (on_pv / "train.csv").stat().st_uid == 1000
    assert not (on_pv.parent / ".download.tar.gz").exists()
