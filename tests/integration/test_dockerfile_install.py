"""The Dockerfile's install steps, replayed without a Docker engine (none is available here).

Who uses it: ``make test``. It exists because an image that is never built rots silently: it
runs hadolint, checks the stages, users, pins and labels, and *replays* the install steps of
each target in a clean virtualenv — the ``RUN ... pip install`` lines are parsed out of the
Dockerfile, so the test cannot drift from it — then runs the installed entry points.

* controller: a brand-new venv, real resolution of ``./[controller]`` from PyPI (network), then
  ``kubeclip crd`` and ``python -m controller --help`` must work, ``kubeclip run`` must not be offered
  and torch must NOT be importable.
* trainer: the base image already holds torch 2.14.1; its stand-in is this project's venv, made
  visible to a fresh venv through a ``.pth`` file (kubeclip itself filtered out), exactly as
  pip would find torch in ``pytorch/pytorch``. The test checks pip kept that torch (the pin
  matches the base), that the trainer entry points import from the installed copy and that
  ``kubeclip crd``/``operator`` (controller commands) are not offered.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from support.dockerfile import ROOT, base_python_shim, clean_env, env_of, pip_runs, replay, run_py, stages  # noqa: F401

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
    crd = subprocess.run(
        [str(venv / "bin" / "kubeclip"), "crd"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crd.returncode == 0, crd.stderr
    assert "kind: CustomResourceDefinition" in crd.stdout
    assert "finetunejobs.kubeclip.dev" in crd.stdout
    helped = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "controller", "--help"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "operator" in (helped.stdout + helped.stderr).lower() or "usage" in helped.stdout.lower()
    no_trainer = subprocess.run(
        [str(venv / "bin" / "kubeclip"), "run", "job.yaml"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_trainer.returncode == 2, no_trainer.stdout + no_trainer.stderr
    assert "No such command" in no_trainer.stderr, no_trainer.stdout + no_trainer.stderr
    no_torch = run_py(venv / "bin" / "python", "import torch", elsewhere)
    assert no_torch.returncode != 0
    assert "No module named 'torch'" in no_torch.stderr
    # The API package is installed with kubeclip; no trainer code is.
    where = run_py(
        venv / "bin" / "python",
        "import importlib.util, kubeclip.api, controller\n"
        "print(controller.__file__, importlib.util.find_spec('trainer'))",
        elsewhere,
    )
    assert where.returncode == 0, where.stdout + where.stderr
    assert str(venv) in where.stdout, where.stdout + where.stderr
    assert where.stdout.strip().endswith("None"), where.stdout + where.stderr


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
    assert versions.startswith("2.14.1"), versions
    assert versions.endswith("3.3.0"), versions
    assert torch_file.startswith(str(base_site)), "pip replaced the base image's torch: the pins disagree"
    assert trainer_origin.startswith(str(venv)), trainer_origin
    assert has_node == "True", "trainer.node (the pod command, docs/contracts.md) is not installed"
    helped = subprocess.run(
        [str(venv / "bin" / "kubeclip"), "--help"],
        cwd=elsewhere,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "run" in helped.stdout, helped.stdout + helped.stderr
    # The trainer image has no controller package: its commands are not offered.
    for command in ("crd", "operator"):
        absent = subprocess.run(
            [str(venv / "bin" / "kubeclip"), command],
            cwd=elsewhere,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert absent.returncode == 2, absent.stdout + absent.stderr
        assert "No such command" in absent.stderr, absent.stdout + absent.stderr
