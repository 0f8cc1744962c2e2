"""A real, throwaway Kubernetes control plane: etcd + kube-apiserver (+ kube-controller-manager).

Who uses it: the session fixture ``cluster`` in ``tests/conftest.py``, ``hack/cluster.py``
(``make cluster-up`` / ``make cluster-down``) and ``hack/bench_controller.py``. It exists because kubeclip is an operator and its
tests need what only a real API server does: CRD structural-schema and CEL validation, label
selectors, the status subresource, resourceVersion conflicts, RBAC, impersonation, server-side
defaults — the same idea as controller-runtime's envtest.

Only the standard library and the ``openssl`` CLI are used, so ``hack/cluster.py`` runs without the
test dependencies. Binaries come from ``$KUBEBUILDER_ASSETS`` when it holds them, else from
``$KUBECLIP_TOOLS/bin`` (built by ``hack/tools.sh``).

There is no kubelet and no scheduler: pods can be created but never run; tests play the kubelet
by patching pod status. (``make cluster-up`` runs the same control plane with ``netns``/``node_ip``
set, inside the network namespace of a full one-node cluster: ``devkit/node.py``; then the
controller manager runs its default controllers.) kube-controller-manager, when built, runs only the garbage collector (so
ownerReference cascades really happen), the serviceaccount controller (every namespace gets its
``default`` ServiceAccount, which the ServiceAccount admission plugin needs before pods can be
created) and the namespace controller (deleted namespaces are emptied and go away).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, overload

from . import netns as _netns
from .paths import tools_bin
from .ports import free_port

SERVICE_CIDR = "10.96.0.0/16"
READY_TIMEOUT_S = 180.0  # a cold kube-apiserver on 2 busy cores installs its CRD/RBAC bootstrap in ~5-20 s
ADMIN_USER = "kubeclip-admin"
T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message says what to do."""


@overload
def find_binary(name: str, required: Literal[True] = True) -> Path: ...
@overload
def find_binary(name: str, required: bool) -> Path | None: ...
def find_binary(name: str, required: bool = True) -> Path | None:
    """$KUBEBUILDER_ASSETS/<name> when present (the envtest convention), else $KUBECLIP_TOOLS/bin/<name>."""
    candidates = []
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(os.environ["KUBEBUILDER_ASSETS"]) / name)
    candidates.append(tools_bin() / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    if required:
        raise ControlPlaneError(
            f"{name} not found (looked in {', '.join(map(str, candidates))}). "
            "Run `make tools` (hack/tools.sh) to build kube-apiserver/etcd and fetch kubectl/helm/promtool."
        )
    return None


def client_bin_dir() -> Path:
    """The directory holding kubectl, helm and promtool together ($KUBECLIP_TOOLS/bin: hack/tools.sh
    links $KUBEBUILDER_ASSETS' kubectl there too), so tests can put one directory on PATH."""
    d = tools_bin()
    missing = [n for n in ("kubectl", "helm", "promtool") if not os.access(d / n, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{', '.join(missing)} missing in {d}: run `make tools` (hack/tools.sh).")
    return d


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the process that started it dies (even by SIGKILL),
    so a killed pytest leaves no etcd/apiserver behind. Linux prctl(PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


#: openssl req arguments for a new EC P-256 key without a passphrase (generated in milliseconds).
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def signed_cert(d: Path, name: str, subject: str, extfile: str) -> None:
    """``<d>/<name>.key`` and ``<name>.crt`` for ``subject``, signed by ``<d>/ca.crt`` for 30 days
    with the extensions in ``<d>/<extfile>`` (the control plane's certs and the node's kubelet cert)."""
    _openssl("req", "-new", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "30",
        "-extfile",
        extfile,
        cwd=d,
    )


def make_pki(d: Path, extra_ips: tuple[str, ...] = ()) -> None:
    """A CA, the apiserver's serving cert, an admin client cert (group system:masters) and the
    service-account signing key pair. EC P-256 keys: generated in milliseconds.
    ``extra_ips``: more IP SANs of the serving cert (the node IP of the one-node cluster)."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        *EC_KEY,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/CN=kubeclip-test-ca",
        cwd=d,
    )
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1"
        + "".join(f",IP:{ip}" for ip in extra_ips)
        + "\nextendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subj, ext in (
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", f"/O=system:masters/CN={ADMIN_USER}", "client.ext"),
    ):
        signed_cert(d, name, subj, ext)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str = ADMIN_USER) -> None:
    """Admin kubeconfig with the certificates inlined, so it can be copied anywhere."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubeclip-test", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}
        ],
        "contexts": [
            {"name": "kubeclip-test", "context": {"cluster": "kubeclip-test", "user": user, "namespace": "default"}}
        ],
        "current-context": "kubeclip-test",
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML: kubectl, helm and the python client read it
    path.chmod(0o600)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) under ``workdir``.

    ``owned=True`` (tests): children die with this process and ``stop()`` runs at exit.
    ``owned=False`` (``make cluster-up``): children outlive this process; ``state.json`` in
    ``workdir`` records their process groups for ``stop_from_state()``.
    ``netns``/``node_ip`` (the one-node cluster): every process runs inside that network namespace,
    the API server listens on 0.0.0.0:6443 there and advertises ``node_ip`` (so the ``kubernetes``
    Service has endpoints), reaches kubelets by their InternalIP, and the controller manager runs
    its default controllers (Deployments, EndpointSlices, root-ca-cert-publisher, PV binding, ...).
    """

    workdir: Path
    owned: bool = True
    controller_manager: bool = True
    netns: str | None = None
    node_ip: str | None = None
    kubeconfig_name: str = "kubeconfig"  # the one-node cluster keeps ``kubeconfig`` for the host's relay
    #: Admission plugins enabled on top of the API server's defaults (``--enable-admission-plugins``),
    #: e.g. ``OwnerReferencesPermissionEnforcement`` as OpenShift runs it. Empty: the defaults only.
    admission_plugins: tuple[str, ...] = ()
    server: str = ""
    kubeconfig: Path = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.kubeconfig = self.workdir / self.kubeconfig_name

    # ------------------------------------------------------------------ start
    def start(self) -> ControlPlane:
        etcd = find_binary("etcd")
        apiserver = find_binary("kube-apiserver")
        kcm = find_binary("kube-controller-manager", required=False) if self.controller_manager else None
        client_bin_dir()  # fail now, clearly, rather than in the first test that shells out
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.owned:
            atexit.register(self.stop)  # also on KeyboardInterrupt / failing session teardown
        pki = self.workdir / "pki"
        make_pki(pki, (self.node_ip,) if self.node_ip else ())
        try:
            self._start_etcd(etcd)
            self._start_apiserver(apiserver, pki)
            write_kubeconfig(self.kubeconfig, self.server, pki)
            self._wait_ready(pki)
            if kcm is not None:
                self._start_controller_manager(kcm)
        except BaseException:
            self.stop()
            raise
        if not self.owned:
            self.write_state()
        return self

    def write_state(self, **extra: object) -> None:
        """state.json for ``stop_from_state()``: process groups in start order (+ ``extra`` keys)."""
        (self.workdir / "state.json").write_text(
            json.dumps(
                {
                    "server": self.server,
                    "kubeconfig": str(self.kubeconfig),
                    "pgids": {n: p.pid for n, p in self.procs.items()},
                    **extra,
                },
                indent=2,
            )
        )

    def _in_ns(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a health probe) where the processes listen: inside ``netns`` when set."""
        return _netns.call_in(self.netns, fn) if self.netns else fn()

    def spawn(self, name: str, argv: list[str], in_netns: bool = True) -> subprocess.Popen[bytes]:
        """Start ``argv`` (inside ``netns`` when set, unless ``in_netns`` is False) in its own process
        group, output to ``<name>.log``; ``stop()`` and ``state.json`` include it."""
        return self._spawn(name, argv, in_netns)

    def _spawn(self, name: str, argv: list[str], in_netns: bool = True) -> subprocess.Popen[bytes]:
        if self.netns and in_netns:
            argv = _netns.wrap(self.netns) + argv
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() kills the whole group
                preexec_fn=_die_with_parent if self.owned else None,
            )
        self.procs[name] = proc
        return proc

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        p = self.workdir / f"{name}.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) if p.exists() else ""

    def _start_etcd(self, etcd: Path) -> None:
        client, peer = (2379, 2380) if self.netns else (free_port(), free_port())  # a fresh namespace: all ports free
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=kubeclip-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=kubeclip-test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",  # throwaway data: do not pay for fsync on a shared disk
                "--log-level=warn",
            ],
        )
        deadline = time.monotonic() + 30
        while True:
            self._check_alive("etcd")

            def healthy() -> bool:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                    return bool(json.load(r).get("health") == "true")

            try:
                if self._in_ns(healthy):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"etcd not healthy after 30 s:\n{self.log_tail('etcd')}")
            time.sleep(0.1)

    def _start_apiserver(self, apiserver: Path, pki: Path) -> None:
        port = 6443 if self.netns else free_port()
        self.server = f"https://127.0.0.1:{port}"
        if self.node_ip:
            where = ["--bind-address=0.0.0.0", f"--advertise-address={self.node_ip}"]
            node = [
                # the node's hostname means nothing to the machine's DNS: reach the kubelet by its IP
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'admin.crt'}",
                f"--kubelet-client-key={pki / 'admin.key'}",
            ]
        else:
            where = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
            node = ["--endpoint-reconciler-type=none"]  # single throwaway apiserver: no lease bookkeeping
        self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={self.etcd_url}",
                *where,
                f"--secure-port={port}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                *([f"--enable-admission-plugins={','.join(self.admission_plugins)}"] if self.admission_plugins else []),
                *node,
                "--v=1",
            ],
        )

    def _wait_ready(self, pki: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = ""
        while True:
            self._check_alive("kube-apiserver")

            def ready() -> bool:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as r:
                    return bool(r.status == 200)

            try:
                if self._in_ns(ready):
                    return
            except urllib.error.HTTPError as e:  # 500 while post-start hooks run
                last = e.read().decode(errors="replace")[-500:]
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f} s ({last}):\n{self.log_tail('kube-apiserver')}"
                )
            time.sleep(0.2)

    def restart_controller_manager(self, timeout_s: float = 60) -> None:
        """Restart kube-controller-manager and wait until its garbage collector watches every resource.

        The collector rediscovers API resources only every 30 s (fixed in kube-controller-manager),
        so the first cascade from objects of a CRD created after start can take 30-45 s; restarting
        after installing the CRD makes it immediate. Takes ~1-3 s."""
        kcm = self.procs.pop("kube-controller-manager", None)
        if kcm is None:
            raise ControlPlaneError("no kube-controller-manager running (make tools builds it)")
        _stop_group(kcm.pid, kcm)
        self._start_controller_manager(find_binary("kube-controller-manager"), wait_gc_s=timeout_s)

    def _start_controller_manager(self, kcm: Path, wait_gc_s: float = 0) -> None:
        log = self.workdir / "kube-controller-manager.log"
        offset = log.stat().st_size if log.exists() else 0
        pki = self.workdir / "pki"
        if self.node_ip:  # a real cluster's set, incl. root-ca-cert-publisher and the endpointslice controllers
            controllers = [
                "--controllers=*",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
            ]
        else:
            controllers = ["--controllers=garbagecollector,serviceaccount,namespace"]
        self._spawn(
            "kube-controller-manager",
            [
                str(kcm),
                f"--kubeconfig={self.kubeconfig}",
                *controllers,
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )
        deadline = time.monotonic() + max(wait_gc_s, 0.5)
        while True:
            time.sleep(0.1)
            self._check_alive("kube-controller-manager")
            if time.monotonic() >= deadline:
                if wait_gc_s:
                    raise ControlPlaneError(
                        f"garbage collector not synced after {wait_gc_s} s:\n"
                        + self.log_tail("kube-controller-manager")
                    )
                return
            if wait_gc_s:
                with open(log, "rb") as f:
                    f.seek(offset)
                    if b"all resource monitors have synced" in f.read():
                        return

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """SIGTERM each process group (controller-manager, apiserver, etcd: reverse start order),
        SIGKILL what is left after 10 s."""
        for name in reversed(list(self.procs)):
            _stop_group(self.procs[name].pid, self.procs[name])
        self.procs.clear()


def _stop_group(pgid: int, proc: subprocess.Popen[bytes] | None = None, grace_s: float = 10.0) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                break
        else:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        proc.wait()


def stop_from_state(workdir: Path) -> bool:
    """Stop a control plane started with ``owned=False`` (``make cluster-down``). False if none."""
    state = Path(workdir) / "state.json"
    if not state.exists():
        return False
    for pgid in reversed(list(json.loads(state.read_text())["pgids"].values())):
        _stop_group(pgid)
    state.unlink()
    return True


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kubeclip-cp-"))
