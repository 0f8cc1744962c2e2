"""The ``kubeclip`` command: one entry point for people, dispatching lazily.

Each sub-command imports its side only when called, so ``kubeclip crd`` or ``kubeclip operator``
work in the controller image (no torch) and ``kubeclip run`` starts quickly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="A FineTuneJob manifest (YAML).")],
    nproc: Annotated[int | None, typer.Option("--nproc", help="Override spec.numProcPerNode.")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Override spec.output.path.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Run a FineTuneJob on this machine (numProcPerNode processes, gloo on CPU)."""
    from trainer.launch import run_local

    raise typer.Exit(run_local(manifest, nproc=nproc, output=output, quiet=quiet))


def _register_operator() -> None:
    """``kubeclip operator``: the controller's own command (flags defined once, in controller.cli).
    Importing it loads typer and the settings dataclass only, not kopf. The trainer image installs
    no controller, so there the command does not exist."""
    if importlib.util.find_spec("controller") is None:
        return
    from controller.cli import operator

    app.command("operator")(operator)


_register_operator()


@app.command()
def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition as YAML."""
    from controller.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
