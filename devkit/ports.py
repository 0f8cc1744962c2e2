"""A free TCP port on loopback: the one ``free_port`` of the dev kit, the hack/ scripts and the tests.

Who uses it: ``devkit.controlplane`` (etcd and kube-apiserver of the test control plane),
``devkit.node`` and ``hack/monitoring.py`` (host relays), ``devkit.operator`` (the controller's
metrics and health ports), the trainer integration tests and ``hack/bench_trainer.py`` (torchrun's
master port). The port is free when returned; whoever binds it next gets it (good enough on a
test machine, where nothing else races for loopback ports).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
