"""The ``kubeclip`` command: one entry point for people, dispatching lazily.

Each sub-command imports its side only when called, so ``kubeclip crd`` or ``kubeclip operator``
work in the controller image (no torch) and ``kubeclip run`` starts quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


@app.command()
def run(
    manifest: Path = typer.Argument(..., help="A FineTuneJob manifest (YAML)."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Override spec.numProcPerNode."),
    output: Optional[str] = typer.Option(None, "--output", help="Override spec.output.path."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Run a FineTuneJob on this machine (numProcPerNode processes, gloo on CPU)."""
    from trainer.launch import run_local

    raise typer.Exit(run_local(manifest, nproc=nproc, output=output, quiet=quiet))


@app.command()
def operator(
    namespace: Optional[list[str]] = typer.Option(None, "--namespace", "-n", help="Watch only these namespaces."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Watch every namespace (default when no --namespace)."),
    metrics_port: int = typer.Option(8080, "--metrics-port", help="Prometheus /metrics port (0: off)."),
    health_port: int = typer.Option(8081, "--health-port", help="/healthz and /readyz port (0: off)."),
    leader_election: bool = typer.Option(True, "--leader-election/--no-leader-election", help="Reconcile only while holding the Lease."),
    lease_name: Optional[str] = typer.Option(None, "--lease-name", help="Lease name (default kubeclip-controller)."),
    lease_namespace: Optional[str] = typer.Option(None, "--lease-namespace", help="Lease namespace (default $POD_NAMESPACE, else default)."),
    default_image: Optional[str] = typer.Option(None, "--default-image", help="Trainer image for jobs without spec.image ($KUBECLIP_DEFAULT_IMAGE)."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run the FineTuneJob controller (KUBECONFIG, then in-cluster config)."""
    from controller.operator import main as operator_main

    raise typer.Exit(
        operator_main(
            namespaces=list(namespace or []), all_namespaces=all_namespaces, metrics_port=metrics_port,
            health_port=health_port, leader_election=leader_election, lease_name=lease_name,
            lease_namespace=lease_namespace, default_image=default_image, log_level=log_level,
        )
    )


@app.command()
def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition as YAML."""
    from controller.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
