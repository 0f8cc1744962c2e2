"""A handle on a running cluster: kubeconfig, server URL, the real kubectl and helm, API clients.

Who uses it: the ``cluster`` fixture in ``tests/conftest.py`` (the test control plane) and the
``kube`` fixture of tests/e2e (the one-node cluster, :func:`local_cluster`); ``hack/cluster.py``,
``hack/deploy.py``, ``hack/monitoring.py`` and ``hack/kueue.py`` (:func:`local_cluster`);
``hack/bench_controller.py``. It exists so that everything talks to an API server the same three
ways (kubectl, helm, the Python client) through one runner, with the same admin credentials, and
can act as another user through impersonation (RBAC tests).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import CLUSTER_DIR, tools_bin


@dataclass(frozen=True)
class Cluster:
    kubeconfig: str  # path of the admin kubeconfig (user in group system:masters)
    server: str  # https://127.0.0.1:<port>
    bin: str  # directory holding kubectl, helm, promtool, ...
    control_plane: Any = field(default=None, repr=False, compare=False)  # devkit.controlplane.ControlPlane
    #: How long one kubectl/helm call may take unless the call says otherwise (``timeout=``).
    command_timeout_s: float = 120

    def restart_controller_manager(self) -> None:
        """Call after installing a CRD whose objects own other objects: the garbage collector then
        watches it at once, instead of after its next 30 s rediscovery (first cascade 30-45 s)."""
        self.control_plane.restart_controller_manager()

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, and ``bin`` first on PATH: for launching subprocesses (the operator)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        as_user: str | None = None,
        as_groups: list[str] | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster (text mode, output captured).

        ``as_user``/``as_groups`` become ``--as``/``--as-group`` (impersonation by the admin).
        With ``check=True`` a non-zero exit raises ``CommandFailed`` (a CalledProcessError whose
        message carries stdout and stderr).
        """
        imp = [f"--as={as_user}"] if as_user else []
        imp += [f"--as-group={g}" for g in as_groups or []]
        argv = [str(Path(self.bin) / "kubectl"), f"--kubeconfig={self.kubeconfig}", *imp, *args]
        return _run(argv, input, check, self.env(), timeout or self.command_timeout_s)

    def helm(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real helm against this cluster (text mode, output captured)."""
        argv = [str(Path(self.bin) / "helm"), f"--kubeconfig={self.kubeconfig}", *args]
        return _run(argv, None, check, self.env(), timeout or max(self.command_timeout_s, 300))

    def api_client(self, as_user: str | None = None, as_groups: list[str] | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` with admin credentials, optionally impersonating
        ``as_user`` / ``as_groups`` (sent as Impersonate-User / Impersonate-Group headers)."""
        from kubernetes import config

        client = config.new_client_from_config(config_file=self.kubeconfig)  # type: ignore[no-untyped-call]
        if as_user:
            client.set_default_header("Impersonate-User", as_user)
        if as_groups:
            _impersonate_groups(client, list(as_groups))
        return client


def local_cluster(command_timeout_s: float = 120) -> Cluster:
    """The one-node cluster of ``make cluster-up``: its host kubeconfig (``.cluster/kubeconfig``,
    reaching the API server through the host relay) and the kubectl/helm of ``make tools``.
    Whether it is up is the caller's question (``hack/cluster.py`` state, ``netns.exists``)."""
    return Cluster(
        kubeconfig=str(CLUSTER_DIR / "kubeconfig"),
        server="",
        bin=str(tools_bin()),
        command_timeout_s=command_timeout_s,
    )


def _impersonate_groups(client: Any, groups: list[str]) -> None:
    """Send one Impersonate-Group header per group.

    ApiClient.default_headers is a plain dict (one value per name) and the API server does not split
    a comma-joined value, so the header is added where the request reaches urllib3, which sends
    every value of an HTTPHeaderDict as its own header line.
    """
    import urllib3

    pool = client.rest_client.pool_manager
    original = pool.request

    def request(method: str, url: str, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
        merged = urllib3.HTTPHeaderDict(headers or {})
        for g in groups:
            merged.add("Impersonate-Group", g)
        return original(method, url, *args, headers=merged, **kwargs)

    pool.request = request


class CommandFailed(subprocess.CalledProcessError):
    """CalledProcessError that prints what the command said, so a failing test shows why."""

    def __str__(self) -> str:
        cmd = " ".join(a for a in self.cmd if not a.startswith("--kubeconfig="))
        return f"{cmd} exited {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _run(
    argv: list[str], input: str | None, check: bool, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc
