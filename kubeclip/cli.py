"""The ``kubeclip`` command: one entry point for people, dispatching lazily.

Each sub-command imports its side only when called, so ``kubeclip crd`` or ``kubeclip operator``
work in the controller image (no torch) and ``kubeclip run`` starts quickly; a command whose side
the image does not install (``crd`` and ``operator`` in the trainer image, ``run`` in the
controller image) is not offered.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


@app.callback()
def _commands() -> None:
    """Keeps ``kubeclip`` a group of commands even where only one is installed (typer would otherwise
    make the trainer image's lone ``run`` the command itself, and ``kubeclip run job.yaml`` would fail)."""


def _installed(package: str) -> bool:
    """Each image installs one side: the controller image has no ``trainer`` package, the trainer
    image no ``controller`` package, and a command of the missing side is not offered at all."""
    return importlib.util.find_spec(package) is not None


def run(
    manifest: Annotated[Path, typer.Argument(help="A FineTuneJob manifest (YAML).")],
    nproc: Annotated[int | None, typer.Option("--nproc", help="Override spec.numProcPerNode.")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Override spec.output.path.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Run a FineTuneJob on this machine (numProcPerNode processes, gloo on CPU)."""
    from trainer.launch import run_local

    raise typer.Exit(run_local(manifest, nproc=nproc, output=output, quiet=quiet))


def crd() -> None:
    """Print the FineTuneJob CustomResourceDefinition as YAML."""
    from controller.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


def _register() -> None:
    """``run`` where the trainer is installed; ``operator`` (the controller's own command, flags
    derived from its Settings in controller.cli; importing it loads typer and the settings
    dataclass, not kopf) and ``crd`` where the controller is."""
    if _installed("trainer"):
        app.command()(run)
    if _installed("controller"):
        from controller.cli import operator

        app.command("operator")(operator)
        app.command()(crd)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
