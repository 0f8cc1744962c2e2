"""The node of the local one-node cluster: containerd + runc + CNI, kubelet, kube-proxy, the host relay.

Who uses it: ``hack/cluster.py`` (``make cluster-up`` / ``make cluster-down``) and, through it, the e2e
tests (tests/e2e); ``hack/monitoring.py``, ``hack/kueue.py`` and some e2e tests read its names
(``NAME``, ``RUN_DIR``, ``NODE_IP``). It exists because kubeclip's promises are kept inside pods, and the API-server-only
control plane of the fast tests (``controlplane.py``) runs none.

Layout (``NAME`` = ``kubeclip``, one cluster per machine):
  network namespace ``NAME``   every process below runs in it (``netns.wrap``); the node IP is a /32 on
                               its ``lo``; pods sit on the CNI bridge ``cni0`` (POD_CIDR) in it; Services
                               are kube-proxy's iptables rules in it. Nothing is reachable from outside.
  /run/kubeclip/               sockets and containerd's state (pod network namespaces included)
  <workdir>/                   pki, logs, containerd's root (images), kubelet's root, volumes
  host 127.0.0.1:<port>        socat -> /run/kubeclip/apiserver.sock -> socat (in the namespace) ->
                               127.0.0.1:6443: ``<workdir>/kubeconfig`` works from the host shell.

Facts this depends on (checked on the CI machine, cgroup v1, no CAP_SYS_RESOURCE, no module loading):
containerd needs ``restrict_oom_score_adj`` (else every sandbox fails with runc's "can't get final
child's PID from pipe"); the kubelet needs ``failCgroupV1: false``, ``cgroupDriver: cgroupfs``; the
pause image is built locally (``hack/images.sh system``), nothing can be pulled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from . import netns
from .cluster import Cluster
from .controlplane import ControlPlane, ControlPlaneError, client_bin_dir, find_binary, signed_cert, write_kubeconfig
from .ports import free_port

NAME = "kubeclip"
NODE_NAME = "kubeclip-node"
NODE_IP = "10.250.0.2"
POD_CIDR = "10.244.0.0/24"
CLUSTER_DNS = "10.96.0.10"
RUN_DIR = Path("/run/kubeclip")
CONTAINERD_SOCK = RUN_DIR / "containerd.sock"
APISERVER_SOCK = RUN_DIR / "apiserver.sock"
PAUSE_IMAGE = "kubeclip.local/pause:dev"
CNI_BIN = Path("/usr/lib/cni")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def containerd_config(workdir: Path) -> str:
    return f"""version = 2
root = "{workdir / "containerd"}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.grpc.v1.introspection.tracing"]
[grpc]
  address = "{CONTAINERD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{workdir / "cni"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{workdir / "containerd-opt"}"
"""


def cni_config(workdir: Path) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(workdir / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(workdir: Path) -> str:
    pki = workdir / "pki"
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # this machine: cgroup v1, swap allowed, no systemd
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / "kubelet.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": "cluster.local",
            "resolvConf": "",
            # images can never be pulled again: never garbage-collect them; tolerate a full-ish shared disk
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "serializeImagePulls": False,
            # the kubelet refreshes mounted Secrets/ConfigMaps on a pod's periodic sync (default every 1 min):
            # the Prometheus Operator's rendered configuration reached Prometheus ~75 s after `helm upgrade`.
            # A one-pod-handful node syncs every 10 s at no measurable cost.
            "syncFrequency": "10s",
            "maxPods": 110,
            "shutdownGracePeriod": "0s",
        },
        indent=2,
    )


def kube_proxy_config(workdir: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(workdir / "kubeconfig.internal")},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "clusterCIDR": "10.244.0.0/16",
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
            # Without br_netfilter a reply from a pod on the same bridge would skip the un-DNAT:
            # masquerading all Service traffic sends it back through the bridge's gateway.
            "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        },
        indent=2,
    )


def _kubelet_cert(pki: Path) -> None:
    """The kubelet's serving cert, signed by the cluster CA, for its IP (the API server dials it)."""
    (pki / "kubelet.ext").write_text(f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n")
    signed_cert(pki, "kubelet", f"/CN={NODE_NAME}", "kubelet.ext")


class Node:
    """Starts the node's processes through ``cp.spawn`` (so they share its state.json and stop())."""

    def __init__(self, cp: ControlPlane):
        self.cp = cp
        self.workdir = cp.workdir
        self.host_port = 0
        #: kubectl and helm from the host, through the relay (``<workdir>/kubeconfig``, written by start_relay)
        self.kube = Cluster(
            kubeconfig=str(self.workdir / "kubeconfig"), server="", bin=str(client_bin_dir()), command_timeout_s=300
        )

    # ---------------------------------------------------------------- relay (host <-> namespace)
    def start_relay(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        APISERVER_SOCK.unlink(missing_ok=True)
        self.cp.spawn("relay-in", ["socat", f"UNIX-LISTEN:{APISERVER_SOCK},fork,mode=600", "TCP:127.0.0.1:6443"])
        self.host_port = free_port()
        self.cp.spawn(
            "relay-out",
            ["socat", f"TCP-LISTEN:{self.host_port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{APISERVER_SOCK}"],
            in_netns=False,
        )
        write_kubeconfig(self.workdir / "kubeconfig", f"https://127.0.0.1:{self.host_port}", self.workdir / "pki")
        self._wait("the host relay", lambda: self.kube.kubectl("get", "--raw=/readyz", check=False).returncode == 0, 30)

    # ---------------------------------------------------------------- containerd
    def start_containerd(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        conf = _write(self.workdir / "containerd.toml", containerd_config(self.workdir))
        _write(self.workdir / "cni" / "10-kubeclip.conflist", cni_config(self.workdir))
        self.cp.spawn(
            "containerd", [shutil.which("containerd") or "containerd", f"--config={conf}", "--log-level=warn"]
        )
        self._wait("containerd", lambda: self.ctr("version", check=False).returncode == 0, 60, "containerd")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", f"--address={CONTAINERD_SOCK}", "-n", "k8s.io", *args], capture_output=True, text=True
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def import_images(self, archives: list[str]) -> None:
        for a in archives:
            self.ctr("images", "import", a)

    # ---------------------------------------------------------------- kubelet, kube-proxy, scheduler
    def start_scheduler(self) -> None:
        self.cp.spawn(
            "kube-scheduler",
            [
                str(find_binary("kube-scheduler")),
                f"--kubeconfig={self.cp.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
        )

    def start_kubelet(self) -> None:
        pki = self.workdir / "pki"
        _kubelet_cert(pki)
        conf = _write(self.workdir / "kubelet.json", kubelet_config(self.workdir))
        self.cp.spawn(
            "kubelet",
            [
                str(find_binary("kubelet")),
                f"--config={conf}",
                f"--kubeconfig={self.cp.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--cert-dir={pki}",
                "--v=1",
            ],
        )
        self._wait(f"node {NODE_NAME} Ready", self._node_ready, 120, "kubelet")

    def _node_ready(self) -> bool:
        out = self.kube.kubectl(
            "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False
        )
        return out.returncode == 0 and out.stdout.strip() == "True"

    def start_kube_proxy(self) -> None:
        conf = _write(self.workdir / "kube-proxy.json", kube_proxy_config(self.workdir))
        self.cp.spawn("kube-proxy", [str(find_binary("kube-proxy")), f"--config={conf}", "--v=1"])

    # ---------------------------------------------------------------- helpers
    def _wait(self, what: str, ok: Callable[[], object], timeout_s: float, log: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not ok():
            for name in self.cp.procs:
                if self.cp.procs[name].poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {self.cp.procs[name].returncode} while waiting for "
                        f"{what}:\n{self.cp.log_tail(name)}"
                    )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what}: not after {timeout_s:.0f} s" + (f"\n{self.cp.log_tail(log)}" if log else "")
                )
            time.sleep(0.5)


# -------------------------------------------------------------------- teardown
def _pids_of_shims() -> list[int]:
    """containerd-shim processes serving our containerd (they daemonize out of its process group)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(CONTAINERD_SOCK).encode() in cmd:
            pids.append(int(d.name))
    return pids


def _cgroup_pids(root: str = "kubepods") -> list[int]:
    """Every process in the kubelet's pod cgroups (pods' containers and their pause processes)."""
    pids: set[int] = set()
    for hier in Path("/sys/fs/cgroup").iterdir():
        base = hier / root
        if base.is_dir():
            for procs in base.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _remove_cgroups(root: str = "kubepods") -> None:
    for hier in Path("/sys/fs/cgroup").iterdir():
        base = hier / root
        if base.is_dir():
            for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


def mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below ``roots`` (from /proc/self/mountinfo), deepest first."""
    prefixes = [str(r.resolve()) if r.exists() else str(r) for r in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == p or mp.startswith(p + "/") for p in prefixes):
            found.append(mp)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def _group_members(pgids: set[int]) -> list[int]:
    """Live (non-zombie) processes whose process group is one of ``pgids``."""
    live = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            live.append(int(d.name))
    return live


def _stop_groups(pgids: set[int], grace_s: float = 10.0) -> None:
    """SIGTERM every group at once, SIGKILL what is left after ``grace_s``. Zombies (children of a
    long-gone `cluster-up`, reaped by init in its own time) do not count as left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pg in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pg, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5)
        while _group_members(pgids) and time.monotonic() < deadline:
            time.sleep(0.1)


TIMINGS: dict[str, float] = {}  # seconds since the start of teardown() at the end of each stage


def teardown(workdir: Path, pgids: dict[str, int]) -> list[str]:
    """Stop every process of the cluster, unmount what it mounted, delete its network namespace.

    Order: kubelet first (it would restart what we kill), then the pods' processes (SIGKILL by
    cgroup), the shims, the rest of the recorded process groups (all at once), then
    mounts under ``workdir`` and RUN_DIR, the pod cgroups and the namespace. Returns what it could
    not clean (empty when clean)."""
    t0 = time.monotonic()
    if "kubelet" in pgids:
        _stop_groups({pgids["kubelet"]})
    TIMINGS["kubelet"] = time.monotonic() - t0
    for pid in _cgroup_pids() + _pids_of_shims():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    control_plane = ("kube-apiserver", "etcd")
    _stop_groups({pg for name, pg in pgids.items() if name != "kubelet" and name not in control_plane})
    # a throwaway control plane: the apiserver's graceful shutdown (draining watches for ~10 s) buys nothing
    for name, grace_s in (("kube-apiserver", 2.0), ("etcd", 5.0)):
        if name in pgids:
            _stop_groups({pgids[name]}, grace_s)
    TIMINGS["processes"] = time.monotonic() - t0
    deadline = time.monotonic() + 10
    while (_pids_of_shims() or _cgroup_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    TIMINGS["pods"] = time.monotonic() - t0
    problems = []
    for mp in mounts_under(workdir, RUN_DIR):
        proc = subprocess.run(["umount", mp], capture_output=True, text=True)
        if proc.returncode != 0:
            proc = subprocess.run(["umount", "-l", mp], capture_output=True, text=True)
            if proc.returncode != 0:
                problems.append(f"umount {mp}: {proc.stderr.strip()}")
    TIMINGS["mounts"] = time.monotonic() - t0
    _remove_cgroups()
    try:
        netns.delete(NAME)
    except netns.NetnsError as e:
        problems.append(str(e))
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    left = _pids_of_shims() + _cgroup_pids() + _group_members(set(pgids.values()))
    if left:
        problems.append(f"processes left: {left}")
    return problems
