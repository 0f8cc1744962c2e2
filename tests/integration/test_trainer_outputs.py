"""One output directory, one job (trainer/ownership.py), and deterministic data errors as final verdicts.

Real processes: the pod entrypoint ``python -m trainer.node`` with the env the controller sets
(``KUBECLIP_JOB_UID`` among it), a termination-log file as ``/dev/termination-log``, a real tiny
OpenCLIP model and real PNG files.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trainer_helpers import REPO, env, manifest

from devkit.ports import free_port
from kubeclip.api import EXIT_CHECKPOINT_MISMATCH, EXIT_DATA, EXIT_OUTPUT_IN_USE, FINAL_EXIT_CODES

pytestmark = pytest.mark.slow


def node_env(tmp: Path, name: str, uid: str) -> dict:
    e = env()
    term = tmp / f"termination-{name}-{uid}"
    term.write_text("")
    e.update(
        PET_NNODES="1",
        PET_NPROC_PER_NODE="1",
        PET_NODE_RANK="0",
        PET_MASTER_ADDR="127.0.0.1",
        PET_MASTER_PORT=str(free_port()),
        KUBECLIP_JOB_NAME=name,
        KUBECLIP_NAMESPACE="ml",
        KUBECLIP_JOB_UID=uid,
        KUBECLIP_TERMINATION_LOG=str(term),
        KUBECLIP_ROW_CACHE=str(tmp / "row-cache"),
    )
    return e


def run_node(job: Path, e: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.node", str(job)],
        capture_output=True,
        text=True,
        env=e,
        cwd=REPO,
        timeout=timeout,
    )


def snapshot(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in ("checkpoints", "final")
        for p in sorted((out / sub).rglob("*"))
        if p.is_file()
    }


def test_a_second_job_on_the_same_output_is_refused_and_a_changed_dataset_never_resumes(tmp_path):
    out = tmp_path / "shared-out"
    training = {"epochs": 1, "batchSize": 8, "workers": 0, "checkpointEverySteps": 4, "keepCheckpoints": 5}
    first = manifest(tmp_path, "first", out, training=training, nproc=1)
    done = run_node(first, node_env(tmp_path, "first", "uid-first"))
    assert done.returncode == 0, done.stderr[-3000:]
    before = snapshot(out)
    assert any(k.startswith("checkpoints/step-") for k in before)
    assert "final/open_clip_model.safetensors" in before

    # Another job (another uid) pointed at the same path: one final line naming the owner, nothing touched.
    second = manifest(tmp_path, "second", out, training=training, nproc=1)
    e = node_env(tmp_path, "second", "uid-second")
    refused = run_node(second, e, timeout=120)
    assert refused.returncode == EXIT_OUTPUT_IN_USE
    assert FINAL_EXIT_CODES[EXIT_OUTPUT_IN_USE] == "OutputInUse"
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"output: {out} belongs to job ml/first (uid uid-first)"), refused.stderr[-2000:]
    assert "spec.output.takeOver" in line
    assert Path(e["KUBECLIP_TERMINATION_LOG"]).read_text() == line  # kubectl describe shows this line
    assert snapshot(out) == before

    # The first job's own rerun (same uid) is still its owner: it resumes after its last step, exports again.
    again = run_node(first, node_env(tmp_path, "first", "uid-first"))
    assert again.returncode == 0, again.stderr[-3000:]

    # Taken over on purpose with another trainCsv (the same images, other rows): the old checkpoint
    # must not be resumed (it would continue the old data position, or re-export the old model).
    before = snapshot(out)
    rows = (tmp_path / "data" / "train.csv").read_text().splitlines()
    other_csv = tmp_path / "other-train.csv"
    other_csv.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    doc = yaml.safe_load(second.read_text())
    doc["spec"]["dataset"].update(trainCsv=str(other_csv), root=str(tmp_path / "data"))
    doc["spec"]["output"]["takeOver"] = True
    second.write_text(yaml.safe_dump(doc))
    e = node_env(tmp_path, "second", "uid-second")
    mismatch = run_node(second, e)
    assert mismatch.returncode == EXIT_CHECKPOINT_MISMATCH, mismatch.stderr[-3000:]
    assert f"output: {out} taken over from job ml/first (uid uid-first)" in mismatch.stderr
    line = Path(e["KUBECLIP_TERMINATION_LOG"]).read_text().splitlines()[0]
    assert line in mismatch.stderr.splitlines()
    assert line.startswith("checkpoint step-"), line
    assert "spec.dataset.trainCsv was 'sha256:" in line, line
    assert "spec.dataset.root" in line  # the images resolve against another directory too
    assert snapshot(out) == before


def test_an_image_that_does_not_decode_is_a_final_one_line_verdict(tmp_path):
    """A PNG whose header is intact passes the preflight (it parses headers); its pixel data is
    cut short. Read by a loader worker, it must end the run with exit 9, not a retryable 1."""
    out = tmp_path / "out"
    job = manifest(
        tmp_path,
        "corrupt",
        out,
        training={"epochs": 1, "batchSize": 8, "workers": 1, "checkpointEverySteps": 0},
        nproc=1,
    )
    rows = (tmp_path / "data" / "train.csv").read_text().splitlines()
    victim = tmp_path / "data" / rows[5].split(",")[0]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])
    e = node_env(tmp_path, "corrupt", "uid-corrupt")
    proc = run_node(job, e)
    assert proc.returncode == EXIT_DATA, proc.stderr[-3000:]
    assert FINAL_EXIT_CODES[EXIT_DATA] == "DataError", proc.stderr[-3000:]
    line = Path(e["KUBECLIP_TERMINATION_LOG"]).read_text().splitlines()[0]  # what kubectl describe shows
    assert line.startswith(f"data: image {victim} (row 4 of the CSV's data rows) cannot be read"), line
    assert line in proc.stderr.splitlines()


def test_kubeclip_run_refuses_another_jobs_output_before_starting_anything(tmp_path, capsys, monkeypatch):
    """``kubeclip run`` is a local identity (``local:<metadata.name>``): the same manifest resumes,
    another one on the same output gets the one line and exit 7, and no process starts."""
    from trainer import ownership
    from trainer.launch import run_local

    monkeypatch.setenv("KUBECLIP_ROW_CACHE", str(tmp_path / "row-cache"))
    for key in ("KUBECLIP_JOB_UID", "KUBECLIP_JOB_NAME", "KUBECLIP_NAMESPACE"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "out"
    ownership.claim(out, ownership.identity("elsewhere"))
    job = manifest(tmp_path, "mine", out, training={"epochs": 1, "batchSize": 8}, nproc=1)
    assert run_local(job, quiet=True) == EXIT_OUTPUT_IN_USE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"output: {out} belongs to job elsewhere (uid local:elsewhere), not this job mine")
    assert sorted(p.name for p in out.iterdir()) == [ownership.MARKER]  # no logs/, no checkpoints/
