"""The controller's failure counter has a series for every known failure reason before any job fails.

Who uses it: ``make test``. Found on the local node with a real Prometheus: a labelled counter has no
series until its first increment, and a series whose first sample is already 1 is invisible to
``increase()``, so the first failure of a reason never fired ``KubeclipJobFailed`` and the dashboard's
"Job outcomes" failure line had no data at all.
"""

from __future__ import annotations

from prometheus_client import generate_latest

from controller import metrics
from kubeclip.api import FINAL_EXIT_CODES, Reason


def test_every_known_failure_reason_is_exported_at_zero_before_any_failure():
    text = generate_latest(metrics.REGISTRY).decode()
    reasons = {Reason.BACKOFF_LIMIT_EXCEEDED, Reason.DEADLINE_EXCEEDED, Reason.INVALID_SPEC, *FINAL_EXIT_CODES.values()}
    for reason in reasons:
        line = f'kubeclip_controller_jobs_failed_total{{reason="{reason}"}} '
        assert line in text, f"no failed-total series for {reason}"


def test_a_failure_counts_under_its_reason():
    def value() -> float | None:
        labels = {"reason": Reason.BACKOFF_LIMIT_EXCEEDED}
        return metrics.REGISTRY.get_sample_value("kubeclip_controller_jobs_failed_total", labels)

    before = value()
    assert before is not None
    metrics.record_transition("Failed", Reason.BACKOFF_LIMIT_EXCEEDED)
    assert value() == before + 1
