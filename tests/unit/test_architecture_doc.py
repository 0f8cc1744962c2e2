"""docs/architecture.md's "Where things are" table names every file a contributor can change, and
every repository path the doc names exists.

Who uses it: ``make test``. The table is how a newcomer finds the file to change; a module added
without a row, or a row left behind by a rename, would send them nowhere. The tracked files come
from ``git ls-files`` (a checkout without git FAILS here: the test cannot know the tree otherwise).

The rule (also stated above the table):

* every tracked ``*.py`` and ``*.sh`` under ``controller/``, ``trainer/``, ``kubeclip/``, ``devkit/``
  and ``hack/``, every tracked ``*.py`` under ``tests/`` that is not a test module (``test_*.py``:
  conftest files and helpers), and the build files (``Dockerfile``, ``Makefile``, ``.ci/run``,
  ``pyproject.toml``, ``.pre-commit-config.yaml``) are named in a row of the table by their path from the
  repository root, in backticks (a ``:name`` suffix for a function or class is allowed);
* a package's ``__init__.py`` is named by its directory (``hack/peer/``), and each directory
  directly under ``hack/`` is named as a whole (``hack/node/``), whatever it holds;
* anywhere in the doc, a word whose first path component is a top-level entry of the repository
  (``controller/...``, ``helm/...``, ``tests/...``) must be a tracked file or directory (``*`` globs
  must match one), and every relative link must point at a tracked file.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
PACKAGES = ("controller/", "trainer/", "kubeclip/", "devkit/", "hack/")
BUILD_FILES = ("Dockerfile", "Makefile", ".ci/run", "pyproject.toml", ".pre-commit-config.yaml")
TABLE_HEADING = "## Where things are"


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError:
        pytest.fail("git is not installed: this test lists the tracked files with `git ls-files`; install git")
    if out.returncode != 0:
        pytest.fail(f"`git ls-files` failed in {REPO} (not a git checkout?): {out.stderr.strip()}")
    return out.stdout.splitlines()


def required_names(files: list[str]) -> set[str]:
    """What the table must name: file paths, package directories for ``__init__.py``, ``hack/<dir>/``."""
    need: set[str] = set()
    for f in files:
        name = f.rsplit("/", 1)[-1]
        in_package = f.startswith(PACKAGES) and f.endswith((".py", ".sh"))
        tests_helper = f.startswith("tests/") and f.endswith(".py") and not name.startswith("test_")
        if f.startswith("hack/") and f.count("/") >= 2:
            need.add("hack/" + f.split("/")[1] + "/")  # a directory under hack/, named as a whole
        if not (in_package or tests_helper or f in BUILD_FILES):
            continue
        need.add(f[: -len("__init__.py")] if name == "__init__.py" else f)
    return need


def table_rows(text: str) -> str:
    """The rows of the table under :data:`TABLE_HEADING` (not the paragraph above it)."""
    start = text.index(TABLE_HEADING)
    end = text.find("\n## ", start + len(TABLE_HEADING))
    section = text[start : end if end != -1 else len(text)]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def backticked_paths(text: str) -> set[str]:
    """Every backticked span, with a ``:function`` suffix cut off."""
    return {span.split(":", 1)[0] for span in re.findall(r"`([^`\s]+)`", text)}


def path_words(text: str, top_level: set[str]) -> set[str]:
    """Words of the doc that are repository paths: their first component is a top-level entry."""
    words = set()
    for raw in re.split(r"[\s`()\[\],;|]+", text):
        word = re.split(r"[:#]", raw, maxsplit=1)[0].rstrip(".")  # no `:function`, no `#anchor`
        if "/" in word and word.split("/", 1)[0] in top_level:
            words.add(word)
    return words


def exists(path: str, files: list[str]) -> bool:
    if any(c in path for c in "*?["):
        return any(fnmatch.fnmatch(f, path) for f in files)
    return path in files or any(f.startswith(path.rstrip("/") + "/") for f in files)


def test_the_table_names_every_file_a_contributor_can_change() -> None:
    files = tracked_files()
    named = backticked_paths(table_rows(DOC.read_text()))
    missing = sorted(required_names(files) - named)
    assert not missing, (
        f"{DOC.relative_to(REPO)}'s '{TABLE_HEADING[3:]}' table does not name these (backticked path from the "
        f"repository root; a package's __init__.py by its directory, hack/<dir>/ as a whole): {', '.join(missing)}"
    )


def test_every_path_the_doc_names_exists() -> None:
    files = tracked_files()
    text = DOC.read_text()
    top_level = {f.split("/", 1)[0] for f in files}
    doc_dir = DOC.parent.relative_to(REPO)
    links = {link for link in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in link}
    stale = sorted(p for p in path_words(text, top_level) if not exists(p, files))
    stale += sorted(link for link in links if not exists(os.path.normpath(doc_dir / link), files))  # relative to docs/
    assert not stale, (
        f"{DOC.relative_to(REPO)} names paths that are not tracked files or directories: {', '.join(stale)}"
    )
