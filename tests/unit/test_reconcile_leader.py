"""The pure leader-election rule (controller/leader.py: decide): client-go's local-clock rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from controller.leader import decide

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _spec(holder, renewed, duration=15, transitions=0):
    return {
        "holderIdentity": holder,
        "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "leaseDurationSeconds": duration,
        "leaseTransitions": transitions,
    }


def test_free_lease_is_taken():
    new, _ = decide(None, "me", NOW, 15)
    assert new["holderIdentity"] == "me" and new["leaseDurationSeconds"] == 15 and new["leaseTransitions"] == 0


def test_another_holders_lease_expires_by_our_clock_not_by_its_renew_time():
    """Its renewTime is an hour old by our wall clock (skewed clocks): still valid for 15 s of our
    time from when we first saw it, then taken over, and the takeover is counted."""
    stale = _spec("other", NOW - timedelta(hours=1), transitions=3)
    new, seen = decide(stale, "me", NOW, 15, local_now=100.0)
    assert new is None
    new, seen = decide(stale, "me", NOW, 15, observed=seen, local_now=114.9)
    assert new is None
    new, _ = decide(stale, "me", NOW, 15, observed=seen, local_now=115.0)
    assert new["holderIdentity"] == "me" and new["leaseTransitions"] == 4 and new["acquireTime"] == new["renewTime"]


def test_a_renewing_holder_keeps_its_lease_even_with_a_clock_far_ahead_or_behind():
    seen = None
    for i, skew in enumerate((timedelta(hours=-2), timedelta(hours=3), timedelta(minutes=-30))):
        new, seen = decide(
            _spec("other", NOW + skew + timedelta(seconds=i)), "me", NOW, 15, observed=seen, local_now=10.0 * (i + 1)
        )
        assert new is None  # each renewal changes the record: we restart our own count


def test_own_lease_is_renewed_without_a_transition():
    old = _spec("me", NOW - timedelta(seconds=2), transitions=2)
    old["acquireTime"] = "2025-12-31T23:00:00.000000Z"
    new, _ = decide(old, "me", NOW, 15)
    assert (
        new["leaseTransitions"] == 2
        and new["acquireTime"] == old["acquireTime"]
        and new["renewTime"] != old["renewTime"]
    )


def test_released_lease_is_free():
    new, _ = decide({**_spec("", NOW), "leaseDurationSeconds": 1}, "me", NOW, 15)
    assert new["holderIdentity"] == "me"
