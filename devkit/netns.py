"""The network namespace the local one-node cluster lives in, and how to talk into it.

Who uses it: ``devkit/node.py`` (the node's processes start inside the namespace) and
``devkit/controlplane.py`` (health checks of an API server that listens only inside it). It exists
because every pod address, the node IP and every port of the cluster stay in a namespace the cluster
creates itself (``ip netns add``): nothing of it is reachable from, or reaches into, the machine's
own network; the host reaches the API server only through a Unix-socket relay (``node.py``).

Processes enter it with ``nsenter --net=/run/netns/NAME`` and never with ``ip netns exec``: the
latter remounts ``/sys`` in a private mount namespace, and runc (started by containerd) then finds
no cgroup mounts. Python code enters it per thread with ``setns(2)``: ``call_in()``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    """A network-namespace operation failed; the message says which and why."""


def path(name: str) -> Path:
    return NETNS_DIR / name


def exists(name: str) -> bool:
    return path(name).exists()


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def create(name: str, node_ip: str, service_cidr: str | None = None) -> None:
    """``ip netns add NAME``, loopback up, ``node_ip``/32 on ``lo`` (no dummy links: no module
    loading here) and IPv4 forwarding on (pod -> Service -> pod goes through the bridge's gateway).
    With ``service_cidr``, a route to it from ``node_ip``: the namespace has no default route, so a
    connect() from the node to a ClusterIP would fail before kube-proxy's DNAT could rewrite it."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{node_ip}/32", "dev", "lo")
        if service_cidr:
            _ip("-n", name, "route", "add", service_cidr, "dev", "lo", "src", node_ip)
        call_in(name, lambda: Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n"))
    except BaseException:
        delete(name)
        raise


def delete(name: str) -> None:
    if exists(name):
        _ip("netns", "delete", name)


def wrap(name: str) -> list[str]:
    """argv prefix that runs a command inside the namespace (exec, no fork: the pid stays the command's)."""
    return ["nsenter", f"--net={path(name)}"]


def call_in(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread that has joined the namespace; sockets it opens live there.

    setns(2) with CLONE_NEWNET affects only the calling thread, so the rest of the process stays in
    the machine's namespace."""
    result: dict[str, object] = {}

    def run() -> None:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fd = os.open(path(name), os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result["error"] = NetnsError(f"setns({path(name)}): {os.strerror(err)}")
                return
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]  # type: ignore[return-value]
