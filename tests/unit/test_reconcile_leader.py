"""The pure leader-election rule (controller/leader.py: decide) and the plan's idempotence under replay."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from controller.leader import decide

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _spec(holder, renewed, duration=15, transitions=0):
    return {"holderIdentity": holder, "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "leaseDurationSeconds": duration, "leaseTransitions": transitions}


def test_free_lease_is_taken():
    new = decide(None, "me", NOW, 15)
    assert new["holderIdentity"] == "me" and new["leaseDurationSeconds"] == 15 and new["leaseTransitions"] == 0


def test_valid_lease_of_another_holder_is_respected():
    assert decide(_spec("other", NOW - timedelta(seconds=5)), "me", NOW, 15) is None


def test_expired_lease_is_taken_over_and_counted():
    new = decide(_spec("other", NOW - timedelta(seconds=16), transitions=3), "me", NOW, 15)
    assert new["holderIdentity"] == "me" and new["leaseTransitions"] == 4 and new["acquireTime"] == new["renewTime"]


def test_own_lease_is_renewed_without_a_transition():
    old = _spec("me", NOW - timedelta(seconds=2), transitions=2)
    old["acquireTime"] = "2025-12-31T23:00:00.000000Z"
    new = decide(old, "me", NOW, 15)
    assert new["leaseTransitions"] == 2 and new["acquireTime"] == old["acquireTime"] and new["renewTime"] != old["renewTime"]


def test_released_lease_is_free():
    new = decide({**_spec("", NOW), "leaseDurationSeconds": 1}, "me", NOW, 15)
    assert new["holderIdentity"] == "me"
