"""Monitoring on the real node: the Prometheus Operator runs Prometheus from kubeclip's own monitors and rules.

Who uses it: ``make e2e`` (after ``make monitoring-up``). Nothing here writes a scrape configuration:
the chart's ServiceMonitor, PodMonitor and PrometheusRule (deployed with the label the local Prometheus
selects, hack/monitoring/kubeclip-values.yaml) are what the operator turns into Prometheus's
configuration. After a real 2-node CPU FineTuneJob, every query of every panel of the shipped Grafana
dashboard is run against that Prometheus with the dashboard's variables substituted, and must return
data; a job with a bad CSV makes KubeclipJobFailed fire; a job whose node 1 is frozen with SIGSTOP
makes KubeclipTrainingStalled fire (that job starts with the session: ``start_early``). The run's
series are saved to ``.cluster/monitoring-run.json`` (``hack/plot_monitoring.py`` draws the README's
figure from it).

These tests run before the other e2e modules (conftest): KubeclipJobFailed counts failures of the last
15 minutes cluster-wide, so only on a cluster where no job failed just before can its test see the
alert go from inactive to firing (on a fresh ``make e2e`` cluster it does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from e2e_helpers import CONTROLLER_NS, debug, ftj, ftj_manifest, load_dataset

from devkit.paths import CLUSTER_DIR, REPO
from devkit.wait import WaitTimeout, wait_for
from hack import monitoring

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "helm/kubeclip/dashboards/kubeclip.json"
RATE_INTERVAL = "30s"  # Grafana's $__rate_interval for a 5 s scrape interval is 4 x 5 s; a little more is safer
GPU_ONLY = {"GPU memory (peak allocated)"}  # panels whose metric is 0 on CPU (it must be 0, not absent)


class Prometheus:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        return self.get("/api/v1/query", query=expr, **({"time": at} if at else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "5s") -> list[dict]:
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step=step)["result"]

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.get("/api/v1/alerts")["alerts"] if a["labels"].get("alertname") == name]


@pytest.fixture(scope="module")
def prom(kube) -> Prometheus:
    url_file = CLUSTER_DIR / "prometheus-url"
    if not url_file.exists():
        pytest.fail("no local Prometheus: run `make monitoring-up` (`make e2e` does)", pytrace=False)
    url = url_file.read_text().strip()
    try:  # the operator's rendered configuration reaches Prometheus a minute or so after `helm upgrade`
        monitoring.wait_for_kubeclip_config(url, timeout_s=240)
    except WaitTimeout as e:
        pytest.fail(str(e), pytrace=False)
    return Prometheus(url)


@pytest.fixture(scope="module")
def ns(kube):
    name = "e2e-monitoring-" + uuid.uuid4().hex[:5]
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _substitute(expr: str, ns: str, job: str) -> str:
    return (
        expr.replace("$namespace", ns)
        .replace("${namespace}", ns)
        .replace("$job", job)
        .replace("${job}", job)
        .replace("$__rate_interval", RATE_INTERVAL)
    )


def _active_targets(prom: Prometheus) -> list[dict]:
    return prom.get("/api/v1/targets", state="active")["activeTargets"]


@pytest.fixture(scope="module")
def run(kube, prom, ns, dataset_dir) -> dict:
    """A real 2-node CPU job with retention and zero-shot evals, watched through Prometheus while it runs."""
    name = "watched"
    load_dataset(kube, ns, dataset_dir)
    evaluation = {
        "evaluation": {
            "retentionCsv": "/data/penguins/train.csv",  # stands in for what the start model knew
            "zeroShot": {"csv": "/data/penguins/zeroshot.csv"},
        }
    }
    t0 = time.time()
    kube.kubectl("-n", ns, "apply", "-f", "-", input=ftj_manifest(name, epochs=10, extra=evaluation))
    explain = debug(kube, ns, name)
    targets: dict[str, dict] = {}

    def watch() -> bool:
        for t in _active_targets(prom):
            lab = t["labels"]
            if t["health"] == "up" and lab.get("namespace") == ns and lab.get("pod") == f"{name}-node-0":
                targets["trainer"] = t
            if t["health"] == "up" and lab.get("namespace") == CONTROLLER_NS:
                targets["controller"] = t
        return (ftj(kube, ns, name).get("status") or {}).get("phase") in ("Succeeded", "Failed")

    wait_for(watch, 900, f"{ns}/{name} finished", explain=explain, every_s=3)
    status = ftj(kube, ns, name)["status"]
    assert status["phase"] == "Succeeded", explain()
    time.sleep(12)  # two more scrape + evaluation intervals (5 s) for the controller's final counters
    return {"name": name, "start": t0, "end": time.time(), "targets": targets, "status": status}


def test_prometheus_scraped_the_controller_and_node_0_as_up(run):
    targets = run["targets"]
    assert "controller" in targets, "the controller's ServiceMonitor target was never up"
    assert "trainer" in targets, "the job's node 0 (PodMonitor) was never an up target while it ran"
    t = targets["trainer"]
    assert t["scrapeUrl"].endswith("/metrics"), t
    assert t["scrapePool"].startswith("podMonitor/"), t
    assert targets["controller"]["scrapePool"].startswith("serviceMonitor/"), targets["controller"]


def test_series_carry_job_namespace_pod_and_step_reaches_total(prom, ns, run):
    name = run["name"]
    series = prom.query_range(f'kubeclip_trainer_step{{namespace="{ns}"}}', run["start"], run["end"])
    assert series, "no kubeclip_trainer_step series for the job"
    for s in series:
        assert s["metric"]["finetunejob"] == name, s["metric"]
        assert s["metric"]["namespace"] == ns, s["metric"]
        assert s["metric"]["pod"] == f"{name}-node-0", s["metric"]
    reached = max(float(v) for s in series for _, v in s["values"])
    total = run["status"]["progress"]["totalSteps"]
    assert reached == total, f"kubeclip_trainer_step reached {reached}, the job's total is {total}"


def test_every_dashboard_query_returns_data_for_the_run(prom, ns, run):
    dashboard = json.loads(DASHBOARD.read_text())
    empty, nonzero_gpu, saved = [], [], {}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = _substitute(target["expr"], ns, run["name"])
            result = prom.query_range(expr, run["start"], run["end"])
            values = [float(v) for s in result for _, v in s["values"]]
            if not values:
                empty.append(f"{panel['title']}: {expr}")
            elif panel["title"] in GPU_ONLY and any(v != 0 for v in values):
                nonzero_gpu.append(f"{panel['title']}: {values[:5]}")
            saved.setdefault(panel["title"], []).append({"expr": expr, "result": result})
    (CLUSTER_DIR / "monitoring-run.json").write_text(
        json.dumps({"namespace": ns, "job": run["name"], "start": run["start"], "end": run["end"], "panels": saved})
    )
    assert not empty, "dashboard queries with no data for a real run:\n" + "\n".join(empty)
    assert not nonzero_gpu, f"GPU memory on a CPU run: {nonzero_gpu}"


def test_dashboard_variables_list_the_namespace_and_the_job(prom, ns, run):
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    # label_values(METRIC, LABEL) is Grafana's call of /api/v1/label/LABEL/values?match[]=METRIC
    for var, expect in (("namespace", ns), ("job", run["name"])):
        query = _substitute(variables[var]["query"]["query"], ns, run["name"])
        inner = query[len("label_values(") : -1]
        selector, label = (p.strip() for p in inner.rsplit(",", 1))
        values = prom.get(f"/api/v1/label/{label}/values", **{"match[]": selector, "start": run["start"]})
        assert expect in values, f"{var}: {query} -> {values}"


def _firing(prom: Prometheus, name: str, match: dict | None = None) -> dict | None:
    for a in prom.alerts(name):
        if a["state"] == "firing" and all(a["labels"].get(k) == v for k, v in (match or {}).items()):
            return a
    return None


def _wait_alert(prom: Prometheus, name: str, timeout_s: float, match: dict | None = None) -> dict:
    return wait_for(
        lambda: _firing(prom, name, match),
        timeout_s,
        f"{name} firing",
        explain=lambda: json.dumps(prom.get("/api/v1/alerts"), indent=1)[-3000:],
        every_s=3,
    )


def _since(alert: dict) -> float:
    return datetime.fromisoformat(alert["activeAt"].replace("Z", "+00:00")).timestamp()


def _failed_total(prom: Prometheus) -> float:
    result = prom.query("sum(kubeclip_controller_jobs_failed_total)")
    return float(result[0]["value"][1]) if result else 0.0


def test_a_failed_job_fires_kubeclip_job_failed(kube, prom, ns, run):
    # KubeclipJobFailed has no job label (the controller counts failures by reason): a preflight failure
    # in the last 15 minutes, e.g. an earlier e2e run on this cluster, keeps it firing for that reason.
    # Then the transition cannot be seen, and the test proves the rest: Prometheus counts this failure
    # and the alert fires. (Other reasons, such as the start deadlines test_waiting_reasons.py's jobs
    # run into while this module runs, fire on their own series.)
    before = _firing(prom, "KubeclipJobFailed", {"reason": "PreflightFailed"})
    failed_before = _failed_total(prom)
    t0 = time.time()
    kube.kubectl("-n", ns, "apply", "-f", "-", input=ftj_manifest("badcsv", train_csv="bad.csv", backoff=0))
    wait_for(
        lambda: (ftj(kube, ns, "badcsv").get("status") or {}).get("phase") == "Failed",
        300,
        "badcsv Failed",
        explain=debug(kube, ns, "badcsv"),
        every_s=2,
    )
    wait_for(lambda: _failed_total(prom) >= failed_before + 1, 60, "the failure counted by Prometheus", every_s=1)
    alert = _wait_alert(prom, "KubeclipJobFailed", 120, {"reason": "PreflightFailed"})
    assert alert["labels"]["severity"] == "critical"
    if before is None:
        assert _since(alert) >= t0 - 5, alert


def _pod_pids(kube, ns: str, pod: str) -> list[int]:
    """Host PIDs of the pod's processes (cgroupfs: every cgroup path of a pod's process holds pod<uid>)."""
    uid = kube.kubectl("-n", ns, "get", "pod", pod, "-o", "jsonpath={.metadata.uid}").stdout.strip()
    marks = (f"pod{uid}", f"pod{uid.replace('-', '_')}")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroups = (proc / "cgroup").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if any(m in cgroups for m in marks) and b"trainer" in cmdline:
            pids.append(int(proc.name))
    return pids


#: test_a_frozen_trainer_fires_kubeclip_training_stalled's job (its own namespace, started with the session)
FROZEN = "frozen"


def _freeze_when_training(kube, prom: Prometheus, ns: str, frozen: dict, stop: threading.Event) -> tuple[float, list]:
    """Waits until the frozen job trains and no stall alert of it is pending or firing, then SIGSTOPs
    node 1's trainer processes (their PIDs into ``frozen["pids"]`` first, for the SIGCONT at the end);
    returns the time of the freeze and the PIDs. ``stop`` set: gives up (the session is ending)."""
    explain = debug(kube, ns, FROZEN)

    def stopping() -> None:
        if stop.is_set():
            raise RuntimeError("the session ended before the freeze")

    def training() -> bool:
        stopping()
        return ((ftj(kube, ns, FROZEN).get("status") or {}).get("progress") or {}).get("step", 0) >= 3

    wait_for(training, 600, f"{FROZEN} training", explain=explain, every_s=2)
    pids = _pod_pids(kube, ns, f"{FROZEN}-node-1")
    assert pids, "found no trainer process of node 1 on this host"
    # A start-up longer than stalledFor (a loaded node) reads as a stall until the rule sees the steps
    # advance: wait until no stall alert of this job is pending or firing, so the one after is the freeze's.
    match = {"namespace": ns, "finetunejob": FROZEN}

    def no_alert() -> bool:
        stopping()
        return not any(
            all(a["labels"].get(k) == v for k, v in match.items()) for a in prom.alerts("KubeclipTrainingStalled")
        )

    wait_for(
        no_alert,
        180,
        "no KubeclipTrainingStalled alert for the running job",
        explain=lambda: json.dumps(prom.get("/api/v1/alerts"), indent=1)[-3000:],
        every_s=3,
    )
    frozen["pids"] = pids
    t0 = time.time()
    for pid in pids:  # node 1 frozen: node 0 waits in its next all-reduce, still answering scrapes
        os.kill(pid, signal.SIGSTOP)
    return t0, pids


@contextlib.contextmanager
def start_early(request):
    """The frozen-trainer job starts with the session (conftest's ``started_early``): the stall alert
    needs ``stalledFor`` + ``stalledAlertFor`` of a frozen step (105 s on the local cluster), which then
    passes beside this module's other tests instead of after them. Yields (namespace, the Future of the
    freeze: its time, or what went wrong)."""
    kube = request.getfixturevalue("kube")
    url_file = CLUSTER_DIR / "prometheus-url"
    if not url_file.exists():
        pytest.fail("no local Prometheus: run `make monitoring-up` (`make e2e` does)", pytrace=False)
    prom = Prometheus(url_file.read_text().strip())
    ns = "e2e-stalled-" + uuid.uuid4().hex[:5]
    kube.kubectl("create", "namespace", ns)
    frozen: dict = {}
    stop = threading.Event()
    pool = ThreadPoolExecutor(1)
    try:
        load_dataset(kube, ns, request.getfixturevalue("dataset_dir"))
        kube.kubectl("-n", ns, "apply", "-f", "-", input=ftj_manifest(FROZEN, epochs=200, checkpoint_every=50))
        yield ns, pool.submit(_freeze_when_training, kube, prom, ns, frozen, stop)
    finally:
        stop.set()
        pool.shutdown(wait=True)
        for pid in frozen.get("pids", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_frozen_trainer_fires_kubeclip_training_stalled(kube, prom, ns, run, started_early):
    frozen_ns, freeze = started_early[__name__]
    t0, pids = freeze.result(timeout=900)
    try:
        match = {"namespace": frozen_ns, "finetunejob": FROZEN}
        alert = _wait_alert(prom, "KubeclipTrainingStalled", 300, match)
        assert _since(alert) >= t0 - 5, alert  # became active after the freeze, not at the job's start
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["pod"] == f"{FROZEN}-node-0", alert
        # and only for it: not for this module's job that succeeded nor the one that failed (its pods kept)
        stalled = {
            (a["labels"].get("namespace"), a["labels"].get("finetunejob"))
            for a in prom.alerts("KubeclipTrainingStalled")
            if a["labels"].get("namespace") in (ns, frozen_ns)
        }
        assert stalled == {(frozen_ns, FROZEN)}, stalled
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        kube.kubectl("-n", frozen_ns, "delete", "ftj", FROZEN, "--wait=false", check=False)
