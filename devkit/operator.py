"""The controller as a subprocess against a cluster, and the CRD it needs installed.

Who uses it: the controller integration tests (``tests/integration/test_controller*.py``, with
``controller_harness.py`` for the ServiceAccount kubeconfig and the kubelet's part) and
``hack/bench_controller.py`` (the controller at scale). It exists so that both start the real
``python -m controller`` the same way: its own metrics and health ports, its own log file, dead
when the process that started it dies, ready when ``/readyz`` answers 200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .paths import REPO
from .ports import free_port
from .wait import wait_for

CRD_FILE = REPO / "helm/kubeclip/files/crd-finetunejobs.yaml"


def _die_with_parent() -> None:
    """Linux: the controller gets SIGKILL when the process that started it dies, however it dies."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def install_crd(kubectl: Callable[..., Any]) -> bool:
    """Apply the chart's CRD with ``kubectl`` (``Cluster.kubectl``); True when this call created it
    (so the caller may delete it)."""
    existed = kubectl("get", "crd", "finetunejobs.kubeclip.dev", check=False).returncode == 0
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    wait_established(kubectl, "finetunejobs.kubeclip.dev")
    return not existed


def wait_established(kubectl: Callable[..., Any], crd: str, timeout_s: float = 60) -> None:
    """Wait until the CRD named ``crd`` (``plural.group``) is Established. ``kubectl wait`` fails at
    once ("accessor error") while a just-applied CRD has no status yet, so it is retried."""
    wait_for(
        lambda: (
            kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s", check=False).returncode == 0
        ),
        timeout_s,
        f"the CRD {crd} Established",
        every_s=0.5,
    )


class Operator:
    """``python -m controller`` as a subprocess with its own ports and log file."""

    def __init__(self, kubeconfig: Path | str, log_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = log_path
        self.argv = [
            sys.executable,
            "-m",
            "controller",
            f"--metrics-port={self.metrics_port}",
            f"--health-port={self.health_port}",
            *args,
        ]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return self

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError("the controller was not started (Operator.start())")
        return self.proc

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.health_port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""

    def wait_ready(self, timeout: float = 60) -> None:
        proc = self._running()

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"controller exited {proc.returncode}:\n{self.log_tail()}")
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout, "controller /readyz")

    def metrics(self) -> str:
        return self.get("/metrics", self.metrics_port)[1]

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples named ``name`` (with ``labels`` as a substring of the label set)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if (line.startswith(name + "{") or line.startswith(name + " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_kb(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the controller process in KiB."""
        fields = {}
        for line in Path(f"/proc/{self._running().pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            fields[k] = v.strip()
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
