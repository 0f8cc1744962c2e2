"""`make deploy`: helm install of helm/kubeclip into the local cluster with the dev images.

Who uses it: people after `make cluster-up images` and the e2e tests (tests/e2e), which also call
``deploy()`` to switch the controller between its two RBAC modes. The controller then runs
in-cluster, under the chart's ServiceAccount and RBAC, from ``kubeclip-controller:dev``; a
FineTuneJob without ``spec.image`` gets ``kubeclip-trainer:dev``.

    python -m hack.deploy                          # cluster-wide (ClusterRole)
    python -m hack.deploy --watch-namespaces a,b   # only namespaces a and b (a Role in each)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from devkit.cluster import local_cluster
from devkit.paths import CLUSTER_DIR, REPO, tools_dir

RELEASE = "kubeclip"
NAMESPACE = "kubeclip-system"
# The label the local Prometheus selects monitors and rules by (hack/monitoring/prometheus.yaml), as
# kube-prometheus-stack's selects its release name.
MONITORING_RELEASE_LABEL = "kube-prometheus-stack"
MONITORING_VALUES = REPO / "hack/monitoring/kubeclip-values.yaml"
#: Seconds between the controller's progress reads in the local cluster (the chart's default is 15).
PROGRESS_INTERVAL_S = 3


def monitoring_up() -> bool:
    """`make monitoring-up` has run on this cluster: the chart's monitors must stay on across redeploys."""
    return (CLUSTER_DIR / "prometheus-url").exists()


def current_watch_namespaces() -> list[str]:
    """watch.namespaces of the installed release ([] when cluster-wide or not installed)."""
    proc = local_cluster().helm("get", "values", RELEASE, "-n", NAMESPACE, "-o", "json", check=False)
    if proc.returncode != 0:
        return []
    return list(((json.loads(proc.stdout or "{}") or {}).get("watch") or {}).get("namespaces") or [])


def image_key(name: str) -> str | None:
    """The hash of image NAME's inputs (hack/images.sh writes it beside the image), None before its build.
    Tags such as :dev stay the same across rebuilds; this as a pod annotation makes a rebuild roll the pods."""
    key = tools_dir() / "images" / f"{name}.key"
    return key.read_text().strip() if key.exists() else None


def deploy(watch_namespaces: list[str] | None = None, timeout_s: int = 300) -> float:
    """helm upgrade --install, wait until the controller Deployment is available; returns seconds.

    While local monitoring is up (`make monitoring-up`), the release also gets
    hack/monitoring/kubeclip-values.yaml: ServiceMonitor, PodMonitor, PrometheusRule and dashboard on."""
    kubeconfig = CLUSTER_DIR / "kubeconfig"
    if not kubeconfig.exists():
        raise SystemExit(f"no cluster: {kubeconfig} missing (run `make cluster-up images` first)")
    t0 = time.monotonic()
    kube = local_cluster()
    argv = [
        "upgrade",
        "--install",
        RELEASE,
        str(REPO / "helm/kubeclip"),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "image.repository=kubeclip-controller",
        "--set",
        "image.tag=dev",
        "--set",
        "trainerImage.repository=kubeclip-trainer",
        "--set",
        "trainerImage.tag=dev",
        "--set-json",
        f"watch.namespaces={json.dumps(list(watch_namespaces or []))}",
        # The local cluster's jobs last seconds, not hours: the controller reads node 0's progress
        # every PROGRESS_INTERVAL_S instead of 15 s, so `kubectl get ftj` shows it while they run.
        "--set-json",
        f"extraEnv={json.dumps([{'name': 'KUBECLIP_PROGRESS_INTERVAL_SECONDS', 'value': str(PROGRESS_INTERVAL_S)}])}",
        "--wait",
        f"--timeout={timeout_s}s",
    ]
    if monitoring_up():
        argv += ["-f", str(MONITORING_VALUES)]
    if (CLUSTER_DIR / "kueue-up").exists():  # `make kueue-up` ran: the controller's Workload RBAC (hack/kueue.py)
        argv += ["--set", "kueue.enabled=true"]
    # `make images deploy` rolls the controller onto the image just built (same :dev tag)
    key = image_key("kubeclip-controller")
    if key:
        argv += ["--set-string", f"podAnnotations.kubeclip\\.dev/image-key={key}"]
    proc = kube.helm(*argv, check=False, timeout=timeout_s + 60)
    if proc.returncode != 0:
        pods = kube.kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout[-3000:]
        raise SystemExit(f"helm install failed: {proc.stderr.strip()}\n{pods}")
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--watch-namespaces", default="", help="comma-separated; empty: all namespaces")
    args = ap.parse_args()
    watched = [n for n in args.watch_namespaces.split(",") if n]
    secs = deploy(watched)
    print(
        f"kubeclip deployed in {secs:.1f}s into {NAMESPACE} "
        f"({'watching ' + ', '.join(watched) if watched else 'cluster-wide'}): "
        f"controller kubeclip-controller:dev, trainer default kubeclip-trainer:dev"
        + (f"; monitors on (release={MONITORING_RELEASE_LABEL})" if monitoring_up() else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
