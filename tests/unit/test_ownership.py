"""Who owns an output directory (trainer/ownership.py): real files, real concurrent processes."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from kubeclip.api import EXIT_OUTPUT_IN_USE, FINAL_EXIT_CODES, OutputInUse
from trainer import ownership
from trainer.ownership import Owner


def test_identity_is_the_jobs_uid_in_a_pod_and_stable_locally():
    pod = {"KUBECLIP_JOB_UID": "6f1c", "KUBECLIP_JOB_NAME": "pen", "KUBECLIP_NAMESPACE": "ml"}
    assert ownership.identity("ignored", pod) == Owner(uid="6f1c", job="pen", namespace="ml")
    assert ownership.identity("pen", {}) == ownership.identity("pen", {}) == Owner(uid="local:pen", job="pen")


def test_first_claim_owns_reclaim_is_silent_another_job_is_refused(tmp_path):
    out = tmp_path / "out"
    a, b = Owner("uid-a", "a", "ml"), Owner("uid-b", "b", "ml")
    assert ownership.claim(out, a) is None
    assert ownership.claim(out, a) is None  # the same job's next attempt
    with pytest.raises(OutputInUse) as err:
        ownership.claim(out, b)
    line = str(err.value)
    assert line.startswith(f"output: {out} belongs to job ml/a (uid uid-a), not this job ml/b (uid uid-b)")
    assert "\n" not in line
    assert err.value.exit_code == EXIT_OUTPUT_IN_USE
    assert FINAL_EXIT_CODES[EXIT_OUTPUT_IN_USE] == "OutputInUse"
    with pytest.raises(OutputInUse):
        ownership.check(out, b)  # the other nodes refuse too
    assert ownership.read(out) == a
    assert ownership.claim(out, b, take_over=True) == a
    assert ownership.read(out) == b
    assert [p.name for p in out.iterdir()] == [ownership.MARKER]  # no temp file left


def test_a_marker_that_is_not_ours_is_refused_unless_taken_over(tmp_path):
    (tmp_path / ownership.MARKER).write_text("not json")
    me = Owner("uid-a", "a")
    with pytest.raises(OutputInUse, match=r"owner marker .* is not readable; remove it or set spec\.output\.takeOver"):
        ownership.claim(tmp_path, me)
    assert ownership.claim(tmp_path, me, take_over=True) == Owner("unreadable", "unreadable")
    assert json.loads((tmp_path / ownership.MARKER).read_text())["uid"] == "uid-a"


def _claim(out: str, uid: str, start, results) -> None:
    start.wait()
    try:
        ownership.claim(out, Owner(uid, uid))
        results.put((uid, "owner"))
    except OutputInUse:
        results.put((uid, "refused"))


def test_of_jobs_starting_at_once_exactly_one_owns_the_output(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        out = str(tmp_path / f"out{attempt}")
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_claim, args=(out, f"uid-{i}", start, results)) for i in range(6)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
        got = dict(results.get(timeout=5) for _ in procs)
        owners = [uid for uid, what in got.items() if what == "owner"]
        assert len(owners) == 1, got
        assert ownership.read(out).uid == owners[0]
