"""``python -m controller``: the controller without the kubeclip CLI (same flags as ``kubeclip operator``)."""

from __future__ import annotations

import argparse
import sys

from .operator import main as operator_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller", description="Run the FineTuneJob controller.")
    p.add_argument("-n", "--namespace", action="append", default=[], help="Watch only this namespace (repeatable).")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace (default without --namespace).")
    p.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: off).")
    p.add_argument("--health-port", type=int, default=8081, help="/healthz and /readyz port (0: off).")
    p.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=True, help="Reconcile only while holding the Lease.")
    p.add_argument("--lease-name", default=None, help="Lease name (default kubeclip-controller).")
    p.add_argument("--lease-namespace", default=None, help="Lease namespace (default $POD_NAMESPACE or default).")
    p.add_argument("--default-image", default=None, help="Trainer image for jobs without spec.image ($KUBECLIP_DEFAULT_IMAGE).")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR.")
    a = p.parse_args(argv)
    return operator_main(
        namespaces=a.namespace, all_namespaces=a.all_namespaces, metrics_port=a.metrics_port, health_port=a.health_port,
        leader_election=a.leader_election, lease_name=a.lease_name, lease_namespace=a.lease_namespace,
        default_image=a.default_image, log_level=a.log_level,
    )


if __name__ == "__main__":
    sys.exit(main())
