"""The operator's command line, defined once: ``kubeclip operator`` and ``python -m controller``.

Who uses it and why it exists: :mod:`kubeclip.cli` registers :func:`operator` as its ``operator``
command and ``controller/__main__.py`` runs it alone, so both entry points take the same flags
with the same defaults, and those defaults come from :class:`controller.settings.Settings`.
It imports typer only; kopf and the kubernetes client load when the command runs.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any

import typer

from .settings import Settings


def _default(name: str) -> Any:
    """A Settings field's plain default (fields with an environment-dependent default factory are
    resolved at run time by Settings itself, so the flag defaults to None)."""
    for f in fields(Settings):
        if f.name == name:
            return f.default
    raise KeyError(name)


def operator(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", "-n", help="Watch only this namespace (repeatable).")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace (default when no --namespace).")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port (0: off).")] = _default("metrics_port"),
    health_port: Annotated[int, typer.Option(help="/healthz and /readyz port (0: off).")] = _default("health_port"),
    leader_election: Annotated[
        bool, typer.Option("--leader-election/--no-leader-election", help="Reconcile only while holding the Lease.")
    ] = _default("leader_election"),
    lease_name: Annotated[str | None, typer.Option(help=f"Lease name (default {_default('lease_name')}).")] = None,
    lease_namespace: Annotated[
        str | None, typer.Option(help="Lease namespace (default $POD_NAMESPACE, else default).")
    ] = None,
    default_image: Annotated[
        str | None, typer.Option(help="Trainer image for jobs without spec.image ($KUBECLIP_DEFAULT_IMAGE).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = _default("log_level"),
) -> None:
    """Run the FineTuneJob controller (KUBECONFIG, then in-cluster config)."""
    from .operator import main as operator_main

    raise typer.Exit(
        operator_main(
            namespaces=list(namespace or []),
            all_namespaces=all_namespaces,
            metrics_port=metrics_port,
            health_port=health_port,
            leader_election=leader_election,
            lease_name=lease_name,
            lease_namespace=lease_namespace,
            default_image=default_image,
            log_level=log_level,
        )
    )
