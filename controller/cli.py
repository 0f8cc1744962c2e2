"""The operator's command line, derived from :class:`controller.settings.Settings`.

Who uses it and why it exists: :mod:`kubeclip.cli` registers :func:`operator` as its ``operator``
command and ``controller/__main__.py`` runs it alone, so both entry points take the same flags.
Every Settings field is one option (its flags, help text and environment variable come from the
field's metadata), so a new setting needs no edit here. It imports typer only; kopf and the
kubernetes client load when the command runs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from typing import Annotated, Any, get_type_hints

import typer

from .settings import Settings, SettingsError


def _option_type(f: Field[Any], hint: Any) -> Any:
    """The type typer parses a field's flag into; None always means "not given"."""
    if f.metadata["parse"] is not None:
        return str | None  # text, parsed by Settings.load like the environment variable
    if hint == tuple[str, ...]:
        return list[str] | None  # a repeatable flag
    return hint | None


def _help(f: Field[Any]) -> str:
    text = f.metadata["help"]
    if f.default is not MISSING and f.default not in ((), None):
        text += f" (default {f.default})"
    if f.metadata["env"]:
        text += f" (env {f.metadata['env']})"
    return str(text)


def options() -> list[inspect.Parameter]:
    """One keyword parameter per Settings field, annotated with its typer option."""
    hints = get_type_hints(Settings)
    params = []
    for f in fields(Settings):
        flags = f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",)
        if hints[f.name] is bool and not f.metadata["flags"]:
            flags = (f"{flags[0]}/--no-{flags[0][2:]}",)
        option = typer.Option(*flags, help=_help(f), show_default=False)
        # A type built at run time: what typer reads, which mypy cannot check statically.
        annotation = Annotated[_option_type(f, hints[f.name]), option]  # type: ignore[valid-type]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


def settings_command(run: Callable[[Settings], int]) -> Callable[..., None]:
    """A typer command taking every Settings field as an option: it builds the Settings (flags, then
    the environment, then the defaults) and exits with what ``run`` returns."""

    def command(**given: Any) -> None:
        try:
            settings = Settings.load(given, os.environ)
        except SettingsError as err:
            raise typer.BadParameter(str(err)) from None
        raise typer.Exit(run(settings))

    params = options()
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = "Run the FineTuneJob controller (KUBECONFIG, then in-cluster config)."
    command.__name__ = "operator"
    return command


def _run(settings: Settings) -> int:
    from .operator import main

    return main(settings)


operator = settings_command(_run)
