"""``python -m controller``: the controller without the kubeclip CLI (the flags of ``kubeclip operator``,
defined once in :mod:`controller.cli`)."""

from __future__ import annotations

import typer

from .cli import operator


def main() -> None:
    typer.run(operator)


if __name__ == "__main__":
    main()
