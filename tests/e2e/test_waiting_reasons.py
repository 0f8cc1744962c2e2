"""Jobs whose pods never start, on the real node: the reason is on the job, and the job ends.

Who uses it: ``make e2e``. Issue #18 (5): a job with an image that does not exist, and a job whose
pods request more CPU than the node has, each show the kubelet's or the scheduler's reason in
``kubectl describe ftj`` (condition PodsWaiting and a Warning event) within 60 s, and end ``Failed``
with that reason at ``runPolicy.startDeadlineSeconds`` without spending ``backoffLimit``. The pods
never run, so no dataset is needed; both jobs start with the e2e session and are watched at the same
time, beside the tests that run before this module (conftest's ``started_early``).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from e2e_helpers import debug, ftj

from devkit.jobs import finetunejob
from devkit.wait import wait_for

pytestmark = pytest.mark.e2e

#: Short enough for the suite, long enough that the 60 s "shown on the job" check comes first.
START_DEADLINE_S = 75


def _manifest(name: str, *, image: str | None = None, cpu: str = "100m") -> str:
    spec: dict = {
        "model": {"name": "local-dir:/data/penguins/models/tiny-vit-64"},
        "dataset": {"trainCsv": "/data/penguins/train.csv"},
        "output": {"path": f"/data/runs/{name}"},
        "numNodes": 1,
        "numProcPerNode": 1,
        "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "runPolicy": {"backoffLimit": 1, "startDeadlineSeconds": START_DEADLINE_S},
    }
    if image:
        spec["image"] = image
    return json.dumps(finetunejob(name, spec))


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _shown_then_failed(kube, ns: str, name: str, reasons: tuple[str, ...]) -> None:
    explain = debug(kube, ns, name)
    described = wait_for(
        lambda: (
            (out := kube.kubectl("-n", ns, "describe", "ftj", name, check=False).stdout)
            and any(r in out for r in reasons)
            # the Warning event is recorded in the same pass that patches the condition; describe can read
            # the event before the status patch lands, so wait for both (all within the 60 s)
            and "PodsWaiting" in out
            and "Warning" in out
            and out
        ),
        60,
        f"{ns}/{name}: one of {reasons}, condition PodsWaiting and a Warning event in kubectl describe ftj",
        explain=explain,
        every_s=2,
    )
    assert "PodsWaiting" in described, described
    assert "Warning" in described, described
    status = ftj(kube, ns, name)["status"]
    assert status["phase"] in ("Created", "Restarting"), status
    status = wait_for(
        lambda: (st := ftj(kube, ns, name).get("status") or {}).get("phase") in ("Failed", "Succeeded") and st,
        START_DEADLINE_S + 60,
        f"{ns}/{name} Failed at startDeadlineSeconds",
        explain=explain,
        every_s=2,
    )
    assert status["phase"] == "Failed", status
    assert status["reason"] in reasons, status
    assert f"startDeadlineSeconds={START_DEADLINE_S}" in status["message"], status
    assert status["restartCount"] == 0, status
    assert status.get("failedAttempts", 0) == 0, status  # backoffLimit untouched
    waited = (_time(status["completionTime"]) - _time(status["attemptStartTime"])).total_seconds()
    assert START_DEADLINE_S <= waited < START_DEADLINE_S + 30, status


#: name: (manifest, the reasons one of which must be shown)
JOBS = {
    "nopull": (_manifest("nopull", image="kubeclip.local/no-such-image:0"), ("ImagePullBackOff", "ErrImagePull")),
    "toobig": (_manifest("toobig", cpu="1000"), ("Unschedulable",)),
}


@contextlib.contextmanager
def start_early(request):
    """Both jobs applied at once in one namespace when the e2e session begins (conftest's
    ``started_early``) and watched side by side in threads: they only wait out their start deadlines,
    which costs the suite nothing while the tests before this module run. Yields (namespace, {name:
    the Future of its watch}); a Future's ``result()`` raises what its watch found wrong."""
    kube = request.getfixturevalue("kube")
    ns = "e2e-waiting-" + uuid.uuid4().hex[:5]
    kube.kubectl("create", "namespace", ns)
    pool = ThreadPoolExecutor(len(JOBS))
    try:
        futures = {}
        for name, (manifest, reasons) in JOBS.items():
            kube.kubectl("-n", ns, "apply", "-f", "-", input=manifest)
            futures[name] = pool.submit(_shown_then_failed, kube, ns, name, reasons)
        yield ns, futures
    finally:
        pool.shutdown(wait=True)  # a watch ends by its own deadline (START_DEADLINE_S + 60 s at most)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def watched(started_early):
    return started_early[__name__]


def test_an_image_that_does_not_exist_is_shown_and_ends_at_the_start_deadline(watched):
    _, futures = watched
    futures["nopull"].result()


def test_pods_no_node_can_fit_are_shown_as_unschedulable_and_end_at_the_start_deadline(kube, watched):
    ns, futures = watched
    futures["toobig"].result()
    # the scheduler's own words reach the job
    assert "Insufficient cpu" in ftj(kube, ns, "toobig")["status"]["message"]
