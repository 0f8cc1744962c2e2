"""Which rank's failure is the cause, and with which exit code (``trainer.failure``).

The failures are torch's own ``ProcessFailure`` objects, reading the error files that
:func:`trainer.failure.crashed` and :func:`trainer.failure.record` really wrote. Only their exit
codes are chosen by the test: "rank 1 crashed, then torchrun's SIGTERM to the remaining ranks hit it
while it was still exiting" is a race between two real processes (CI hit it once in about thirty
runs of tests/integration/test_trainer_failure.py), which no test can produce on demand.
"""

from __future__ import annotations

import signal

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from kubeclip.api import EXIT_PREFLIGHT
from trainer import failure

SIGTERM = int(signal.SIGTERM)


def failed_rank(tmp_path, monkeypatch, rank: int, exitcode: int, *, verdict: int | None = None) -> ProcessFailure:
    """Rank ``rank`` records a crash (or the one-line ``verdict``) into its error file; torchrun's
    agent then saw it end with ``exitcode`` (negative: killed by that signal)."""
    error_file = tmp_path / f"error-{rank}.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("KUBECLIP_TERMINATION_LOG", str(tmp_path / "termination-log"))
    if verdict is None:
        try:
            raise IndexError("pop from empty list")
        except IndexError as err:
            failure.crashed(err)
    else:
        failure.record(verdict, "preflight: train.csv: no column 'caption'")
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(error_file))


def test_a_rank_sigtermed_by_torchrun_after_its_own_crash_keeps_its_crash(tmp_path, monkeypatch):
    crashed_first = failed_rank(tmp_path, monkeypatch, 1, -SIGTERM)
    crashed_second = failed_rank(tmp_path, monkeypatch, 0, 1)
    rank, cause = failure.first_failure({0: crashed_second, 1: crashed_first})
    assert rank == 1
    assert failure.killed_by(cause) is None
    assert failure.exit_code(cause) == 1
    lines = failure.console_lines(cause)
    assert lines[-2] == "IndexError: pop from empty list", lines
    assert lines[-1].startswith("rank 1 failed: IndexError: pop from empty list (test_failure.py:"), lines


def test_a_verdict_keeps_its_exit_code_when_torchrun_stops_the_rank(tmp_path, monkeypatch):
    verdict = failed_rank(tmp_path, monkeypatch, 0, -SIGTERM, verdict=EXIT_PREFLIGHT)
    assert failure.killed_by(verdict) is None
    assert failure.exit_code(verdict) == EXIT_PREFLIGHT


def test_a_rank_killed_without_a_record_is_reported_as_killed(tmp_path):
    killed = ProcessFailure(local_rank=0, pid=1000, exitcode=-int(signal.SIGKILL), error_file=str(tmp_path / "none"))
    assert failure.killed_by(killed) == int(signal.SIGKILL)
    assert failure.exit_code(killed) == 128 + int(signal.SIGKILL)


@pytest.mark.parametrize("exitcode", [1, EXIT_PREFLIGHT, 143])
def test_a_rank_that_exited_by_itself_keeps_its_code(tmp_path, monkeypatch, exitcode):
    exited = failed_rank(tmp_path, monkeypatch, 0, exitcode)
    assert failure.killed_by(exited) is None
    assert failure.exit_code(exited) == exitcode
