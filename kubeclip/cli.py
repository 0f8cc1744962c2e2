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
) -> None:
    """Run the FineTuneJob controller (KUBECONFIG, then in-cluster config)."""
    from controller.operator import main as operator_main

    raise typer.Exit(operator_main(namespaces=list(namespace or []), all_namespaces=all_namespaces))


@app.command()
def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition as YAML."""
    from controller.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
