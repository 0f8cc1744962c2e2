"""Reading the Dockerfile without a Docker engine: its stages, ENV, COPY sources and ``RUN pip``
lines, and replaying those lines in a clean virtualenv.

Who uses it: ``tests/unit/test_dockerfile.py`` (static checks, no network) and
``tests/integration/test_dockerfile_install.py`` (the replayed installs, which reach PyPI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


# ----------------------------------------------------------------------------- parsing


def instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1].strip() + " "
            continue
        buf += s
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages() -> tuple[dict[str, str], dict[str, list[tuple[str, str]]], dict[str, str]]:
    """(global ARG defaults, {stage name: instructions}, {stage name: base image})."""
    args: dict[str, str] = {}
    by_stage: dict[str, list[tuple[str, str]]] = {}
    bases: dict[str, str] = {}
    current = None
    for kw, rest in instructions(DOCKERFILE.read_text()):
        if kw == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            image = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
            current = m.group(2)
            by_stage[current] = []
            bases[current] = image
        elif current is None:
            if kw == "ARG":
                name, _, default = rest.partition("=")
                args[name] = default
        else:
            by_stage[current].append((kw, rest))
    return args, by_stage, bases


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ENV key=value pairs of a stage (quotes removed)."""
    env: dict[str, str] = {}
    for kw, rest in stage:
        if kw == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[key] = value.strip('"')
    return env


def pip_runs(stage: list[tuple[str, str]]) -> list[str]:
    runs = [rest for kw, rest in stage if kw == "RUN" and "pip" in rest and " install " in rest]
    assert runs, "the stage installs kubeclip with pip"
    return runs


def copy_sources(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from=...)."""
    out = []
    for kw, rest in stage:
        if kw == "COPY" and "--from=" not in rest:
            *srcs, dest = rest.split()
            out.append((srcs, dest))
    return out


def replay(stage: list[tuple[str, str]], root: Path, env: dict[str, str]) -> int:
    """Replay a stage under ``root``: WORKDIR and COPY lay out the files, and each ``RUN`` that
    installs with pip runs in the WORKDIR in effect at that point. Returns how many RUNs ran.
    Other RUNs (useradd, chown) need root and a real image, so they are not replayed."""
    workdir = None
    ran = 0
    for kw, rest in stage:
        if kw == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif kw == "COPY" and "--from=" not in rest:
            assert workdir is not None, "WORKDIR comes before COPY"
            *srcs, dest = rest.split()
            for src in srcs:
                target = workdir / dest
                if len(srcs) > 1 or dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    if not src.endswith("/"):
                        target = target / Path(src).name
                source = ROOT / src
                if source.is_dir():
                    shutil.copytree(
                        source,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
                    )
                else:
                    shutil.copy2(source, target)
        elif kw == "RUN" and rest in pip_runs(stage):
            assert workdir is not None, "WORKDIR comes before the install"
            # --no-cache-dir keeps the image small; here it would only make pip fetch every wheel again
            # on each run, so the replay lets pip use this machine's cache (resolution still asks the index)
            proc = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", rest.replace(" --no-cache-dir", "")],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert proc.returncode == 0, (
                f"RUN {rest}\nfailed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
            ran += 1
    return ran


def base_python_shim(tmp: Path) -> Path:
    """A directory whose ``python`` is this interpreter's base Python (3.11, like the images)."""
    shim = tmp / "shim"
    shim.mkdir()
    (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    return shim


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(extra)
    return env


def run_py(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300
    )
