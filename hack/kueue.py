"""`make kueue-up`: Kueue v0.17.0 on the local cluster, with FineTuneJob registered as an external framework.

Who uses it: people trying kubeclip's queueing (README, "Run on a shared cluster") and the Kueue e2e
tests (tests/e2e/test_kueue.py). It runs after `make cluster-up images deploy` and:

1. imports kubeclip.local/kueue:dev into the node (hack/images.sh kueue: cmd/kueue of sigs.k8s.io/kueue,
   the version pinned in hack/kueue/go.mod, a static build in a scratch image);
2. renders Kueue's own manifests from that same Go module the way its releases are made
   (``kubectl kustomize config/default``: CRDs with their conversion-webhook stanzas, RBAC, the
   manager Deployment, internal certificate management, webhooks) and changes only what is local:
   - the manager's image (nothing can be pulled here), its user (uid 65532, as Kueue's distroless
     image) and its CPU request (one small node);
   - its Configuration: ``integrations.externalFrameworks: [FineTuneJob.v1alpha1.kubeclip.dev]``, no
     built-in integration but batch/job (none has a queue-name label here), ``waitForPodsReady``
     on (kubeclip writes PodsReady; a job whose pods do not all run within 5 min is evicted);
   - the webhooks: only those on Kueue's own kinds (Workloads, ClusterQueues, ...) are kept. Its
     pod, Deployment, StatefulSet, Job ... webhooks are ``failurePolicy: Fail`` and would block
     those objects in every namespace while Kueue is down; kubeclip's pods never go through them;
   - the visibility APIService is left out: an aggregated API whose server is down breaks API
     discovery, and with it namespace deletion, for everyone;
3. applies the CRDs server-side (``workloads`` is 1.4 MB, past the client-side annotation limit),
   then the rest; waits for the manager and for its webhook (the internal certificate manager
   fills the Secret and injects the CA first);
4. creates the ResourceFlavor ``default-flavor`` and upgrades the kubeclip release with
   ``kueue.enabled=true`` (the controller's Workload RBAC; hack/deploy.py keeps it on while
   ``.cluster/kueue-up`` exists).

    python -m hack.kueue up        # then: the ClusterQueue / LocalQueue commands it prints
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devkit import netns
from devkit.cluster import local_cluster
from devkit.node import NAME
from devkit.paths import CLUSTER_DIR, REPO
from devkit.wait import WaitTimeout, wait_for
from hack import deploy
from hack.addons import AddonError, go_module_dir

#: kubectl against the local cluster; one call may take 10 min (``rollout status --timeout=300s`` and more).
kubectl = local_cluster(command_timeout_s=600).kubectl
NAMESPACE = "kueue-system"
DEPLOYMENT = "kueue-controller-manager"
MODULE = "sigs.k8s.io/kueue"
IMAGE = "kubeclip.local/kueue:dev"
FLAVOR = "default-flavor"
#: The kind kubeclip's controller manages Workloads for (Kind.version.group).
EXTERNAL_FRAMEWORK = "FineTuneJob.v1alpha1.kubeclip.dev"
#: Kueue's manager Configuration (its config/components/manager/controller_manager_config.yaml,
#: with the integrations and waitForPodsReady kubeclip needs).
CONFIGURATION = {
    "apiVersion": "config.kueue.x-k8s.io/v1beta2",
    "kind": "Configuration",
    "health": {"healthProbeBindAddress": ":8081"},
    "metrics": {"bindAddress": ":8443"},
    "webhook": {"port": 9443},
    "leaderElection": {"leaderElect": True, "resourceName": "c1f6bfd2.kueue.x-k8s.io"},
    "controller": {
        "groupKindConcurrency": {
            "Workload.kueue.x-k8s.io": 5,
            "LocalQueue.kueue.x-k8s.io": 1,
            "Cohort.kueue.x-k8s.io": 1,
            "ClusterQueue.kueue.x-k8s.io": 1,
            "ResourceFlavor.kueue.x-k8s.io": 1,
        }
    },
    "clientConnection": {"qps": 50, "burst": 100},
    "manageJobsWithoutQueueName": False,
    "waitForPodsReady": {"timeout": "5m", "blockAdmission": False},
    "integrations": {"frameworks": ["batch/job"], "externalFrameworks": [EXTERNAL_FRAMEWORK]},
}
KUEUE_GROUP = "kueue.x-k8s.io"
#: Printed at the end, and in README "Run on a shared cluster".
QUEUE_EXAMPLE = """\
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata:
  name: cluster-queue
spec:
  namespaceSelector: {}
  preemption:
    withinClusterQueue: LowerPriority
  resourceGroups:
    - coveredResources: ["cpu", "memory"]
      flavors:
        - name: default-flavor
          resources:
            - name: cpu
              nominalQuota: 4
            - name: memory
              nominalQuota: 16Gi
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata:
  name: team-a
  namespace: default
spec:
  clusterQueue: cluster-queue
"""


def module_dir() -> Path:
    return go_module_dir(REPO / "hack/kueue", MODULE)


def _own_kinds_only(webhook: dict[str, Any]) -> bool:
    """A webhook on Kueue's own API group only (Workloads, ClusterQueues, ResourceFlavors, ...)."""
    groups = {g for rule in webhook.get("rules") or [] for g in rule.get("apiGroups") or []}
    return bool(groups) and groups <= {KUEUE_GROUP}


def render(mod: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kueue's config/default, localised (see the module docstring); returns (CRDs, the rest)."""
    out = kubectl("kustomize", str(mod / "config/default"))
    crds, rest = [], []
    for doc in yaml.safe_load_all(out.stdout):
        if not doc:
            continue
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "APIService":
            continue
        if kind == "CustomResourceDefinition":
            crds.append(doc)
            continue
        if kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            doc["webhooks"] = [w for w in doc.get("webhooks") or [] if _own_kinds_only(w)]
        if kind == "ConfigMap" and name == "kueue-manager-config":
            doc["data"] = {"controller_manager_config.yaml": yaml.safe_dump(CONFIGURATION, sort_keys=False)}
        if kind == "Deployment" and name == DEPLOYMENT:
            tmpl = doc["spec"]["template"]
            # the hash of the image's inputs (hack/images.sh): a rebuilt image under the same tag rolls the pod
            tmpl["metadata"].setdefault("annotations", {})["kubeclip.dev/image-key"] = (
                deploy.image_key("kueue") or "unknown"
            )
            # Kueue's own image is distroless "nonroot" (uid 65532); a scratch image has no user of its
            # own, and the manager runs with runAsNonRoot: the uid goes into the pod instead.
            tmpl["spec"].setdefault("securityContext", {})["runAsUser"] = 65532
            for c in tmpl["spec"]["containers"]:
                if c["name"] == "manager":
                    c["image"], c["imagePullPolicy"] = IMAGE, "IfNotPresent"
                    c.setdefault("resources", {}).setdefault("requests", {})["cpu"] = "100m"
        rest.append(doc)
    return crds, rest


def _dump(docs: list[dict[str, Any]]) -> str:
    return "\n---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def install(mod: Path) -> None:
    crds, rest = render(mod)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_dump(crds))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *[f"crd/{c['metadata']['name']}" for c in crds],
    )
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_dump(rest))
    out = kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=300s", check=False)
    if out.returncode != 0:
        pods = kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout[-3000:]
        logs = kubectl("-n", NAMESPACE, "logs", f"deployment/{DEPLOYMENT}", "--tail=30", check=False).stdout
        raise AddonError(f"Kueue's manager is not available: {out.stderr.strip()}\n{pods}\n{logs}")


def create_flavor() -> None:
    """The ResourceFlavor; its creation goes through Kueue's webhook, so this also waits until the
    webhook serves with the CA the internal certificate manager injected."""
    flavor = yaml.safe_dump(
        {"apiVersion": f"{KUEUE_GROUP}/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}}
    )
    last: list[str] = []

    def applied() -> bool:
        out = kubectl("apply", "--server-side", "-f", "-", input=flavor, check=False)
        last[:] = [out.stderr.strip()]
        return out.returncode == 0

    try:
        wait_for(applied, 180, f"ResourceFlavor {FLAVOR} (through Kueue's webhook)", every_s=2)
    except WaitTimeout as err:
        raise AddonError(f"{err}: {last[0] if last else ''}") from None


def marker() -> Path:
    """Present while Kueue is up on the local cluster: hack/deploy.py then keeps kueue.enabled=true."""
    return CLUSTER_DIR / "kueue-up"


def up() -> int:
    if not (CLUSTER_DIR / "state.json").exists() or not netns.exists(NAME):
        print("no local cluster: run `make cluster-up images deploy` first", file=sys.stderr)
        return 1
    if shutil.which("go") is None:
        print("Go >= 1.24 is needed (Kueue's manifests come from its Go module)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    steps: list[str] = []
    try:
        t = time.monotonic()
        subprocess.run(["bash", str(REPO / "hack/images.sh"), "kueue"], check=True)
        steps.append(f"image {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        install(module_dir())
        steps.append(f"manager {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        create_flavor()
        steps.append(f"webhook + flavor {time.monotonic() - t:.1f}s")
        marker().write_text(EXTERNAL_FRAMEWORK + "\n")
        t = time.monotonic()
        deploy.deploy(deploy.current_watch_namespaces())
        steps.append(f"kubeclip with kueue.enabled {time.monotonic() - t:.1f}s")
    except (AddonError, WaitTimeout, subprocess.CalledProcessError) as e:
        print(f"kueue-up failed: {e}", file=sys.stderr)
        return 1
    print(f"kueue up in {time.monotonic() - t0:.1f}s ({', '.join(steps)})")
    print(f"Kueue {IMAGE} in {NAMESPACE}; external framework {EXTERNAL_FRAMEWORK}; ResourceFlavor {FLAVOR}")
    print("a ClusterQueue and a LocalQueue (kubectl apply -f -):\n" + QUEUE_EXAMPLE)
    print("then label a FineTuneJob: metadata.labels: {kueue.x-k8s.io/queue-name: team-a}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["up"]:
        sys.exit("usage: python -m hack.kueue up")
    sys.exit(up())
