"""Polling until something holds: the one ``wait_for`` of hack/ scripts, benches and tests.

Who uses it: ``hack/monitoring.py`` and ``hack/kueue.py`` (add-ons coming up), ``devkit.operator``
(the controller's readiness, the CRD Established), the controller integration tests and the e2e
tests. One argument order everywhere: what to poll, for how long, what it is called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time; the message says which, how long, and the last thing seen.

    An AssertionError, so a test that waits in vain fails as an assertion; scripts catch it and
    print the message."""


def wait_for(
    ok: Callable[[], T],
    timeout_s: float,
    what: str = "condition",
    *,
    every_s: float = 0.2,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call ``ok`` every ``every_s`` seconds until it returns something truthy, and return that.

    An exception from ``ok`` counts as "not yet" (an object not created yet, a server still
    starting); after ``timeout_s`` seconds :class:`WaitTimeout` names ``what``, the last value or
    exception, and ``explain()`` when given (e.g. ``kubectl describe`` output)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = ok()
            if value:
                return value
            last = value
        except Exception as err:
            last = err
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain else ""
            raise WaitTimeout(f"{what}: not within {timeout_s:.0f} s (last: {last!r}){detail}")
        time.sleep(every_s)
