"""The operator's settings, declared once in :class:`controller.settings.Settings`, reach the command line.

Every field must be settable by a flag of ``kubeclip operator`` / ``python -m controller`` (a new
field that the CLI cannot reach fails here), every environment variable a field names must set it,
a flag must win over its variable, and the flags the Helm chart passes must exist. The command is
parsed by click exactly as in the operator; only the final step (starting kopf) is replaced by
collecting the Settings it would start with.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import get_type_hints

import pytest
import typer
import typer.main

from controller.cli import settings_command
from controller.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HINTS = get_type_hints(Settings)


def _command(run):
    app = typer.Typer()
    app.command()(settings_command(run))
    return typer.main.get_command(app)


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> Settings:
    for f in fields(Settings):
        if f.metadata["env"]:
            monkeypatch.delenv(f.metadata["env"], raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    got: list[Settings] = []
    with pytest.raises(SystemExit) as done:
        _command(lambda s: got.append(s) or 0).main(argv, prog_name="operator")
    assert done.value.code == 0, f"{argv} {env}: exit {done.value.code}"
    return got[0]


def _sample(name: str):
    """A value different from the field's default, as (the value, its text form)."""
    hint, default = HINTS[name], Settings.__dataclass_fields__[name].default
    if name == "controller_pod_labels":
        return (("app", "kubeclip"), ("tier", "control")), json.dumps({"tier": "control", "app": "kubeclip"})
    if hint is bool:
        return (not default), None
    if hint == tuple[str, ...]:
        return ("ns-a",), "ns-a"
    if hint in (int, int | None):
        return 4321, "4321"
    if hint is float:
        return 12.5, "12.5"
    assert hint in (str, str | None), f"{name}: no sample for {hint}; extend this test"
    return "some-value", "some-value"


def _flag(name: str) -> str:
    """The flag that sets ``name`` to its sample (for a bool: the one that flips the default)."""
    f = Settings.__dataclass_fields__[name]
    decl = (f.metadata["flags"] or (f"--{name.replace('_', '-')}",))[0]
    if HINTS[name] is bool:
        on, _, off = decl.partition("/")
        return (off or f"--no-{on[2:]}") if f.default else on
    return decl


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_every_setting_is_reachable_from_the_command_line(name, monkeypatch):
    value, text = _sample(name)
    flag = _flag(name)
    argv = [flag] if text is None else [flag, text]
    assert getattr(_parse(argv, monkeypatch), name) == value


@pytest.mark.parametrize("name", [f.name for f in fields(Settings) if f.metadata["env"]])
def test_environment_sets_a_setting_and_a_flag_wins(name, monkeypatch):
    f = Settings.__dataclass_fields__[name]
    value, text = _sample(name)
    env = {f.metadata["env"]: text if text is not None else ("0" if f.default else "1")}
    assert getattr(_parse([], monkeypatch, env), name) == value
    flag = _flag(name)
    if HINTS[name] is bool:
        argv = [flag.replace("--no-", "--") if flag.startswith("--no-") else f"--no-{flag[2:]}"]
    else:
        numeric, text = HINTS[name] in (int, float, int | None), HINTS[name] in (str, str | None)
        argv = [flag, "7" if numeric else "flag-wins" if text else '{"x": "y"}']
    flagged = getattr(_parse(argv, monkeypatch, env), name)
    assert flagged != value
    assert flagged == getattr(_parse(argv, monkeypatch), name)


def test_defaults_without_flags_or_environment(monkeypatch):
    s = _parse([], monkeypatch)
    for f in fields(Settings):
        if f.default is not MISSING:
            assert getattr(s, f.name) == f.default, f.name
    assert s.clusterwide


def test_namespaces_narrow_the_watch_unless_all_namespaces(monkeypatch):
    assert not _parse(["-n", "a", "--namespace", "b"], monkeypatch).clusterwide
    assert _parse(["-n", "a", "--namespace", "b"], monkeypatch).namespaces == ("a", "b")
    assert _parse(["-A", "-n", "a"], monkeypatch).clusterwide


def test_an_empty_string_setting_from_the_environment_is_kept(monkeypatch):
    """KUBECLIP_MONITORING_NAMESPACE="" means "no monitoring namespace" (chart: monitoringNamespace: "")."""
    assert _parse([], monkeypatch, {"KUBECLIP_MONITORING_NAMESPACE": ""}).monitoring_namespace == ""
    assert _parse([], monkeypatch, {"KUBECLIP_PROGRESS_PORT": ""}).progress_port is None


def test_a_bad_value_is_a_one_line_error_naming_its_source(monkeypatch, capsys):
    monkeypatch.setenv("KUBECLIP_WORKERS", "many")
    with pytest.raises(SystemExit) as done:
        _command(lambda s: 0).main([], prog_name="operator")
    assert done.value.code == 2
    assert "$KUBECLIP_WORKERS='many'" in capsys.readouterr().err


def test_the_charts_flags_are_operator_options():
    template = (REPO / "helm/kubeclip/templates/deployment.yaml").read_text()
    passed = set(re.findall(r"^\s*- (--[a-z-]+)", template, re.M))
    assert {"--metrics-port", "--leader-election", "--no-leader-election", "--default-image"} <= passed
    known = {opt for p in _command(lambda s: 0).params for opt in (*p.opts, *p.secondary_opts)}
    assert passed <= known, passed - known
