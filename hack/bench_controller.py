"""Controller at scale: create N FineTuneJobs at once and measure how fast every job gets its pods.

    python -m hack.bench_controller [N] [--nodes 2]      # N defaults to $KUBECLIP_BENCH_JOBS or 1000

Who uses it: ``make bench`` (N=1000; the test suite applies N=100 without timing assertions, in
tests/integration/test_controller_failover.py). It starts the test suite's real control plane
(etcd + kube-apiserver + controller manager, no kubelet: ``devkit.controlplane``), runs
``python -m controller`` as a subprocess (``devkit.operator``) with leader election on, creates the jobs from 16 client threads, and prints:
time until every job has all its pods and a status, the per-job delay from the job's creation to
its last pod's creation (p50/p95/max, 1 s resolution: API timestamps), the controller's reconcile
duration (its own histogram), and the controller's RSS (current and peak).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from devkit.cluster import Cluster
from devkit.controlplane import ControlPlane, find_binary, new_workdir
from devkit.jobs import cluster_job
from devkit.operator import Operator, install_crd


def _ts(s) -> float:
    return (
        s.timestamp() if isinstance(s, datetime) else datetime.fromisoformat(str(s).replace("Z", "+00:00")).timestamp()
    )


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _histogram_quantile(text: str, name: str, q: float) -> float:
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="?", type=int, default=int(os.environ.get("KUBECLIP_BENCH_JOBS", "1000")))
    p.add_argument("--nodes", type=int, default=2, help="numNodes of every job")
    a = p.parse_args()
    n, nodes = a.n, a.nodes

    from kubernetes import client

    workdir = new_workdir()
    cp = ControlPlane(workdir, owned=True)
    t = time.monotonic()
    cp.start()
    print(f"control plane up in {time.monotonic() - t:.1f}s")
    cluster = Cluster(kubeconfig=str(cp.kubeconfig), server=cp.server, bin=str(find_binary("kubectl").parent))
    op = None
    try:
        install_crd(cluster.kubectl)
        ns = "bench"
        cluster.kubectl("create", "namespace", ns)
        api = cluster.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        core.create_namespaced_service_account(ns, {"metadata": {"name": "default"}}) if not _has_sa(core, ns) else None
        op = Operator(
            cp.kubeconfig,
            workdir / "controller.log",
            "--all-namespaces",
            f"--lease-namespace={ns}",
            "--log-level=WARNING",
        ).start()
        op.wait_ready()
        rss_idle = op.rss_kb()[0]

        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    peak[0] = max(peak[0], op.rss_kb()[0])
                stop.wait(0.5)

        threading.Thread(target=sample, daemon=True).start()
        docs = [cluster_job(f"bench-{i}", ns, numNodes=nodes) for i in range(n)]
        t0 = time.time()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda d: custom.create_namespaced_custom_object("kubeclip.dev", "v1alpha1", ns, "finetunejobs", d),
                    docs,
                )
            )
        t_created = time.time() - t0
        want = n * nodes
        t_pods = t_status = None
        while time.time() - t0 < 1800:
            pods = core.list_namespaced_pod(ns, label_selector="kubeclip.dev/job-name").items
            if t_pods is None and len(pods) >= want:
                t_pods = time.time() - t0
            if t_pods is not None:
                jobs = custom.list_namespaced_custom_object("kubeclip.dev", "v1alpha1", ns, "finetunejobs")["items"]
                if all((j.get("status") or {}).get("phase") == "Created" for j in jobs):
                    t_status = time.time() - t0
                    break
            time.sleep(0.5)
        stop.set()
        if t_pods is None or t_status is None:
            print(f"FAILED: after 30 min {len(pods)}/{want} pods", file=sys.stderr)
            return 1
        jobs = {
            j["metadata"]["name"]: _ts(j["metadata"]["creationTimestamp"])
            for j in custom.list_namespaced_custom_object("kubeclip.dev", "v1alpha1", ns, "finetunejobs")["items"]
        }
        last_pod: dict[str, float] = {}
        for pd in core.list_namespaced_pod(ns, label_selector="kubeclip.dev/job-name").items:
            j = pd.metadata.labels["kubeclip.dev/job-name"]
            last_pod[j] = max(last_pod.get(j, 0), _ts(pd.metadata.creation_timestamp))
        delays = [last_pod[j] - jobs[j] for j in jobs]
        text = op.metrics()
        count = op.metric("kubeclip_controller_reconcile_duration_seconds_count")
        total = op.metric("kubeclip_controller_reconcile_duration_seconds_sum")
        rss_now, hwm = op.rss_kb()
        stat = Path(f"/proc/{op.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        fig = {
            "jobs": n,
            "nodes_per_job": nodes,
            "pods": want,
            "create_all_jobs_s": round(t_created, 1),
            "all_pods_s": round(t_pods, 1),
            "all_status_s": round(t_status, 1),
            "job_to_pods_p50_s": _pct(delays, 0.5),
            "job_to_pods_p95_s": _pct(delays, 0.95),
            "job_to_pods_max_s": max(delays),
            "reconcile_passes": int(count),
            "reconcile_mean_ms": round(1000 * total / count, 1) if count else None,
            "reconcile_p50_le_s": _histogram_quantile(text, "kubeclip_controller_reconcile_duration_seconds", 0.5),
            "reconcile_p95_le_s": _histogram_quantile(text, "kubeclip_controller_reconcile_duration_seconds", 0.95),
            "reconcile_errors": op.metric("kubeclip_controller_reconcile_errors_total"),
            "controller_cpu_s": round(cpu_s, 1),
            "rss_idle_mib": round(rss_idle / 1024),
            "rss_after_mib": round(rss_now / 1024),
            "rss_peak_mib": round(max(hwm, peak[0]) / 1024),
        }
        print("controller at scale:", json.dumps(fig))
        print(
            f"| {n} jobs x {nodes} nodes | all pods {fig['all_pods_s']} s | all statuses {fig['all_status_s']} s | "
            f"job->pods p50 {fig['job_to_pods_p50_s']:.0f} s p95 {fig['job_to_pods_p95_s']:.0f} s | "
            f"reconcile mean {fig['reconcile_mean_ms']} ms p95 <= {fig['reconcile_p95_le_s']} s ({fig['reconcile_passes']} passes) | "
            f"controller CPU {fig['controller_cpu_s']} s | RSS {fig['rss_idle_mib']} -> {fig['rss_peak_mib']} MiB peak |"
        )
        return 0
    finally:
        if op is not None:
            op.stop()
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _has_sa(core, ns: str) -> bool:
    from kubernetes.client.rest import ApiException

    for _ in range(50):
        try:
            core.read_namespaced_service_account("default", ns)
            return True
        except ApiException:
            time.sleep(0.1)
    return False


if __name__ == "__main__":
    sys.exit(main())
