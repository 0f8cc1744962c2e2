"""`make monitoring-up`: the Prometheus Operator on the local cluster, scraping kubeclip through its chart's monitors.

Who uses it: people watching a local FineTuneJob (`make cluster-up images deploy monitoring-up`) and the
monitoring e2e tests (tests/e2e/test_monitoring.py). It runs after `make cluster-up images deploy` and:

1. imports the monitoring images into the node (hack/images.sh monitoring: the operator and its config
   reloader built from github.com/prometheus-operator/prometheus-operator, Prometheus v3.5.0 built from
   github.com/prometheus/prometheus);
2. applies the operator's CRDs and ClusterRole from that same Go module (example/prometheus-operator-crd,
   example/rbac/prometheus-operator) and runs the operator (hack/monitoring/operator.yaml);
3. creates a ``Prometheus`` (hack/monitoring/prometheus.yaml) that, like kube-prometheus-stack, selects
   monitors and rules in every namespace by the label ``release: kube-prometheus-stack``; the operator
   renders its configuration and runs it as a StatefulSet with the config reloader beside it;
4. relays the host's 127.0.0.1:<port> to that Prometheus inside the cluster's network namespace (two
   socat joined by a Unix socket, as for the API server) and writes ``http://127.0.0.1:<port>`` to
   ``.cluster/prometheus-url``; ``make cluster-down`` stops the relay with the rest;
5. upgrades the kubeclip release so that its ServiceMonitor, PodMonitor, PrometheusRule and dashboard
   ConfigMap are switched on with that label (hack/deploy.py does so whenever monitoring is up), and
   waits until Prometheus has loaded the configuration the operator renders from them.

    python -m hack.monitoring up
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from devkit import netns
from devkit.cluster import local_cluster
from devkit.node import NAME, RUN_DIR
from devkit.paths import CLUSTER_DIR, REPO
from devkit.ports import free_port
from devkit.wait import WaitTimeout, wait_for
from hack import deploy
from hack.addons import AddonError, go_module_dir

#: kubectl against the local cluster; one call may take 10 min (``rollout status --timeout=300s`` and more).
kubectl = local_cluster(command_timeout_s=600).kubectl
NAMESPACE = "monitoring"
RELEASE_LABEL = deploy.MONITORING_RELEASE_LABEL
PROMETHEUS_SOCK = RUN_DIR / "prometheus.sock"
MODULE = "github.com/prometheus-operator/prometheus-operator"


def module_dir() -> Path:
    return go_module_dir(REPO / "hack/prometheus-operator", MODULE)


def _with_image_keys(manifest: Path) -> str:
    """The manifest with PROMETHEUS_IMAGE_KEY / OPERATOR_IMAGE_KEY replaced by the images' input hashes."""
    text = manifest.read_text()
    for placeholder, name in (("PROMETHEUS_IMAGE_KEY", "prometheus"), ("OPERATOR_IMAGE_KEY", "prometheus-operator")):
        text = text.replace(placeholder, deploy.image_key(name) or "unknown")
    return text


def install_operator(mod: Path) -> None:
    crds = sorted((mod / "example/prometheus-operator-crd").glob("*.yaml"))
    # Server-side: the CRDs are larger than the last-applied annotation allows.
    kubectl("apply", "--server-side", "--force-conflicts", *[a for c in crds for a in ("-f", str(c))])
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{c.stem.split('_', 1)[1]}.monitoring.coreos.com" for c in crds],
    )
    kubectl("apply", "-f", str(mod / "example/rbac/prometheus-operator/prometheus-operator-cluster-role.yaml"))
    kubectl("apply", "-f", "-", input=_with_image_keys(REPO / "hack/monitoring/operator.yaml"))
    out = kubectl("-n", NAMESPACE, "rollout", "status", "deployment/prometheus-operator", "--timeout=180s", check=False)
    if out.returncode != 0:
        pods = kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout[-3000:]
        raise AddonError(f"the Prometheus Operator is not available: {out.stderr.strip()}\n{pods}")


def run_prometheus() -> str:
    """The Prometheus resource; returns its Service's cluster IP once the server answers /-/ready."""
    manifest = _with_image_keys(REPO / "hack/monitoring/prometheus.yaml").replace("RELEASE_LABEL", RELEASE_LABEL)
    kubectl("apply", "-f", "-", input=manifest)
    wait_for(
        lambda: kubectl("-n", NAMESPACE, "get", "statefulset/prometheus-kubeclip", check=False).returncode == 0,
        120,
        "the operator to create statefulset/prometheus-kubeclip",
        every_s=2,
    )
    out = kubectl(
        "-n", NAMESPACE, "rollout", "status", "statefulset/prometheus-kubeclip", "--timeout=240s", check=False
    )
    if out.returncode != 0:
        pods = kubectl("-n", NAMESPACE, "describe", "pods", "-l", "prometheus=kubeclip", check=False).stdout[-3000:]
        logs = kubectl("-n", NAMESPACE, "logs", "deployment/prometheus-operator", "--tail=30", check=False).stdout
        raise AddonError(f"Prometheus is not ready: {out.stderr.strip()}\n{pods}\n{logs}")
    return kubectl("-n", NAMESPACE, "get", "service/prometheus", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()


def start_relay(cluster_ip: str) -> str:
    """socat (in the namespace) -> Unix socket -> socat (host loopback); recorded in state.json for cluster-down."""
    state_path = CLUSTER_DIR / "state.json"
    state = json.loads(state_path.read_text())
    for name in ("prometheus-relay-out", "prometheus-relay-in"):  # a second `monitoring-up` replaces the relay
        pgid = state["pgids"].pop(name, None)
        if pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, 15)
    PROMETHEUS_SOCK.unlink(missing_ok=True)
    port = free_port()
    argvs = {
        "prometheus-relay-in": [
            *netns.wrap(NAME),
            "socat",
            f"UNIX-LISTEN:{PROMETHEUS_SOCK},fork,mode=600",
            f"TCP:{cluster_ip}:9090",
        ],
        "prometheus-relay-out": [
            "socat",
            f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
            f"UNIX-CONNECT:{PROMETHEUS_SOCK}",
        ],
    }
    for name, argv in argvs.items():
        with open(CLUSTER_DIR / f"{name}.log", "ab") as log:  # the relay keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        state["pgids"][name] = proc.pid
        if name == "prometheus-relay-in":
            wait_for(PROMETHEUS_SOCK.exists, 10, "the relay's socket")
    state_path.write_text(json.dumps(state, indent=2))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=5) as resp:  # noqa: S310 (http on loopback)
                return resp.status == 200
        except OSError:
            return False

    wait_for(ready, 60, f"Prometheus through the host relay ({url})", every_s=2)
    (CLUSTER_DIR / "prometheus-url").write_text(url + "\n")
    return url


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (http on loopback)
        return json.loads(resp.read())["data"]


def wait_for_kubeclip_config(url: str, timeout_s: float = 300) -> None:
    """Until Prometheus has loaded what the operator rendered from kubeclip's monitors and rules.

    The operator writes the configuration into a Secret; the kubelet refreshes the mounted copy on its
    next sync of the pod (every 10 s on the local node: devkit.node's syncFrequency; a minute by default)
    and the config reloader then reloads Prometheus, so a job started right after `helm upgrade` could
    otherwise run before anyone scrapes it."""

    def loaded() -> bool:
        try:
            config = _get(url + "/api/v1/status/config")["yaml"]
            groups = [g["name"] for g in _get(url + "/api/v1/rules")["groups"]]
        except (OSError, ValueError, KeyError):
            return False
        return (
            f"podMonitor/{deploy.NAMESPACE}/{deploy.RELEASE}-trainer/0" in config
            and f"serviceMonitor/{deploy.NAMESPACE}/{deploy.RELEASE}-metrics/0" in config
            and "kubeclip.finetunejobs" in groups
        )

    wait_for(
        loaded, timeout_s, "Prometheus to load kubeclip's PodMonitor, ServiceMonitor and PrometheusRule", every_s=2
    )


def up() -> int:
    if not (CLUSTER_DIR / "state.json").exists() or not netns.exists(NAME):
        print("no local cluster: run `make cluster-up images deploy` first", file=sys.stderr)
        return 1
    if shutil.which("go") is None:
        print("Go >= 1.24 is needed (the operator's CRDs come from its Go module)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    steps: list[str] = []
    try:
        t = time.monotonic()
        subprocess.run(["bash", str(REPO / "hack/images.sh"), "monitoring"], check=True)
        steps.append(f"images {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        install_operator(module_dir())
        steps.append(f"operator {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        cluster_ip = run_prometheus()
        steps.append(f"prometheus {time.monotonic() - t:.1f}s")
        url = start_relay(cluster_ip)
        t = time.monotonic()
        deploy.deploy(deploy.current_watch_namespaces())
        wait_for_kubeclip_config(url)
        steps.append(f"kubeclip monitors loaded {time.monotonic() - t:.1f}s")
    except (AddonError, WaitTimeout, subprocess.CalledProcessError) as e:
        print(f"monitoring-up failed: {e}", file=sys.stderr)
        return 1
    print(f"monitoring up in {time.monotonic() - t0:.1f}s ({', '.join(steps)})")
    print(f"Prometheus (run by the Prometheus Operator): {url}  (also in {CLUSTER_DIR / 'prometheus-url'})")
    print(f"kubeclip's ServiceMonitor, PodMonitor and PrometheusRule carry release={RELEASE_LABEL}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["up"]:
        sys.exit("usage: python -m hack.monitoring up")
    sys.exit(up())
