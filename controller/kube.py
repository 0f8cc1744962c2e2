"""The only module that talks to the Kubernetes API (besides kopf's watches in operator.py).

Who uses it and why it exists: the reconcile pass (:mod:`controller.worker`) reads a job and
its children and applies a :class:`controller.reconcile.Plan` through :class:`Kube`; the leader
elector reads and writes its Lease here. Objects travel as plain camelCase dicts (raw JSON, no
client models), exactly what the pure planner and builders use. Config: ``KUBECONFIG`` (or
``~/.kube/config``) first, then the in-cluster service account.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubeclip.api import API_GROUP, API_VERSION, KIND, TERMINAL_PHASES

from . import queue
from .crd import PLURAL
from .naming import LABEL_JOB, MANAGER
from .reconcile import Delete, Event
from .status import PodPhase
from .times import rfc3339

log = logging.getLogger(__name__)


class Conflict(Exception):
    """The job changed since it was read: the pass is dropped and runs again on the next event."""


class Refused(Exception):
    """The API server refused to create a child (403 quota or Pod Security, 422 invalid, 400): the
    worker shows it on the job (:class:`controller.reconcile.CreateError`) and retries with backoff."""

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.kind, self.name, self.status, self.message = kind, name, status, message


class Terminating(Exception):
    """The job's namespace is being deleted, or is already gone: nothing can be created there any more."""


def describe_error(err: BaseException) -> str | None:
    """A one-line text for an API error (status, reason, the server's message); None otherwise."""
    if not isinstance(err, ApiException):
        return None
    try:
        message = json.loads(err.body or "{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return f"{err.status} {err.reason}: {message}".strip()


def _namespace_gone(err: ApiException) -> bool:
    """A 404 about the namespace itself (creating in a namespace deleted since the job was read)."""
    try:
        details = json.loads(err.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return err.status == 404 and details.get("kind") == "namespaces"


def _check_terminating(err: ApiException) -> None:
    if (err.status == 403 and "NamespaceTerminating" in str(err.body or "")) or _namespace_gone(err):
        raise Terminating(describe_error(err)) from None


def load_config() -> client.ApiClient:
    if os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
        # The kubernetes package ships py.typed but leaves its config loaders unannotated.
        config.load_kube_config()  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32
    return client.ApiClient(cfg)


def _raw(resp: Any) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(resp.data))


def _done(resp: Any) -> None:
    """Read the raw response to its end: only then does urllib3 give the connection back to the
    pool (an unread response costs a new TLS connection on the next call)."""
    resp.data  # noqa: B018


class Kube:
    def __init__(self, api: client.ApiClient | None = None, timeout_s: float = 10.0) -> None:
        self.api = api or load_config()
        #: (connect, read) timeout of every call: a hung connection fails the call instead of the pass.
        self.timeout = (min(5.0, timeout_s), timeout_s)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.net = client.NetworkingV1Api(self.api)

    # ---- jobs ------------------------------------------------------------------------------

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
                ),
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_jobs(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        if not namespaces:
            listed = cast(
                dict[str, Any],
                self.custom.list_cluster_custom_object(API_GROUP, API_VERSION, PLURAL, _request_timeout=self.timeout),
            )
            return cast(list[dict[str, Any]], listed["items"])
        items: list[dict[str, Any]] = []
        for ns in namespaces:
            items += cast(
                dict[str, Any],
                self.custom.list_namespaced_custom_object(
                    API_GROUP, API_VERSION, ns, PLURAL, _request_timeout=self.timeout
                ),
            )["items"]
        return items

    def write_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """PUT the status subresource; the resourceVersion makes a concurrent writer a Conflict."""
        body = {**job, "status": status}
        try:
            return cast(
                dict[str, Any],
                self.custom.replace_namespaced_custom_object_status(
                    API_GROUP,
                    API_VERSION,
                    job["metadata"]["namespace"],
                    PLURAL,
                    job["metadata"]["name"],
                    body,
                    _request_timeout=self.timeout,
                ),
            )
        except ApiException as err:
            if err.status in (404, 409):
                raise Conflict(f"{job['metadata']['name']}: {err.reason}") from None
            raise

    def delete_job(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        try:
            self.custom.delete_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                body=client.V1DeleteOptions(
                    propagation_policy="Background", preconditions=client.V1Preconditions(uid=meta["uid"])
                ),
                _request_timeout=self.timeout,
            )
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    # ---- children --------------------------------------------------------------------------

    def observe(
        self, job: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None, dict[str, dict[str, Any] | None]]:
        """The job's pods (by label), its Service and its ConfigMap (by name), and, while one of its
        pods is failed, lost or being deleted, the Nodes of all its pods (None for a Node that does
        not exist): the planner force-deletes a pod stuck in deletion only when its node is known
        gone, and judges a failed attempt knowing whether the peers' nodes are still Ready."""
        from .naming import configmap_name, service_name

        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pods = _raw(
            self.core.list_namespaced_pod(
                ns, label_selector=f"{LABEL_JOB}={name}", _preload_content=False, _request_timeout=self.timeout
            )
        )["items"]
        svc = self._get(self.core.read_namespaced_service, service_name(name), ns)
        cm = self._get(self.core.read_namespaced_config_map, configmap_name(name), ns)
        nodes: dict[str, dict[str, Any] | None] = {}
        finished = (job.get("status") or {}).get("phase") in TERMINAL_PHASES  # failed pods kept for logs
        troubled = any(
            p["metadata"].get("deletionTimestamp")
            or (not finished and (p.get("status") or {}).get("phase") in (PodPhase.FAILED, PodPhase.UNKNOWN))
            for p in pods
        )
        for p in pods if troubled else ():
            node_name = (p.get("spec") or {}).get("nodeName")
            if node_name and node_name not in nodes:
                nodes[node_name] = self.get_node(node_name)
        return pods, svc, cm, nodes

    # ---- Kueue (controller/queue.py) ---------------------------------------------------------

    def list_workloads(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """The Workloads labelled with the job's name (raises ApiException 404 without Kueue's CRDs)."""
        listed = self.custom.list_namespaced_custom_object(
            queue.GROUP,
            queue.VERSION,
            namespace,
            queue.WORKLOADS,
            label_selector=f"{LABEL_JOB}={job_name}",
            _request_timeout=self.timeout,
        )
        return cast(list[dict[str, Any]], cast(dict[str, Any], listed)["items"])

    def leftover_workloads(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """list_workloads, or none where Kueue is not installed or the chart's Kueue RBAC is off."""
        try:
            return self.list_workloads(namespace, job_name)
        except ApiException as err:
            if err.status in (403, 404):
                return []
            raise

    def _get_cluster(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return cast(
                dict[str, Any],
                self.custom.get_cluster_custom_object(
                    queue.GROUP, queue.VERSION, plural, name, _request_timeout=self.timeout
                ),
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def observe_queue(self, job: dict[str, Any]) -> queue.Observed:
        """What controller/queue.py needs: the job's Workloads, the ResourceFlavors its admission
        names, the WorkloadPriorityClass its label names. Only for jobs with the queue label (and
        for finished ones that may still hold a Workload)."""
        meta = job["metadata"]
        if queue.queue_name(job) is None:
            return queue.Observed()
        try:
            workloads = self.list_workloads(meta["namespace"], meta["name"])
        except ApiException as err:
            if err.status == 404:
                return queue.Observed(api=False)
            if err.status == 403:
                return queue.Observed(api=False, forbidden=True)
            raise
        if (job.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return queue.Observed(workloads=tuple(workloads))
        flavors: dict[str, dict[str, Any] | None] = {}
        for wl in workloads:
            for psa in ((wl.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []:
                for name in (psa.get("flavors") or {}).values():
                    if name not in flavors:
                        flavors[name] = self._get_cluster("resourceflavors", name)
        priority = None
        priority_name = (meta.get("labels") or {}).get(queue.PRIORITY_LABEL)
        if priority_name and not workloads:  # read once, when the Workload is made
            priority = self._get_cluster("workloadpriorityclasses", priority_name)
        return queue.Observed(workloads=tuple(workloads), flavors=flavors, priority=priority)

    def write_workload(self, w: queue.WorkloadWrite) -> str | None:
        """PUT a Workload (finalizers, spec.active) or its status; its resourceVersion makes a
        concurrent writer (Kueue) a Conflict, and the pass runs again on fresh data. Returns the
        new resourceVersion (None when the Workload is gone)."""
        meta = w.body["metadata"]
        args = (queue.GROUP, queue.VERSION, meta["namespace"], queue.WORKLOADS, meta["name"], w.body)
        fn = (
            self.custom.replace_namespaced_custom_object_status
            if w.what == "status"
            else self.custom.replace_namespaced_custom_object
        )
        try:
            out = cast(dict[str, Any], fn(*args, _request_timeout=self.timeout))
        except ApiException as err:
            if err.status == 404:
                return None
            if err.status == 409:
                raise Conflict(f"workload {meta['name']}: {err.reason}") from None
            raise
        return cast(str | None, (out.get("metadata") or {}).get("resourceVersion"))

    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return _raw(self.core.read_node(name, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def _get(self, fn: Any, name: str, ns: str) -> dict[str, Any] | None:
        try:
            return _raw(fn(name, ns, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def create(self, obj: dict[str, Any]) -> None:
        """Create; an object that already exists under that name is fine (deterministic names); one
        the API server refuses (400, 403, 422) raises :class:`Refused`."""
        ns, kind = obj["metadata"]["namespace"], obj["kind"]
        # Each takes (namespace, body) and serializes a plain dict body as it is.
        creators: dict[str, Callable[..., Any]] = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "ConfigMap": self.core.create_namespaced_config_map,
            "NetworkPolicy": self.net.create_namespaced_network_policy,
        }
        try:
            if kind == "Workload":
                self.custom.create_namespaced_custom_object(
                    queue.GROUP, queue.VERSION, ns, queue.WORKLOADS, obj, _request_timeout=self.timeout
                )
                return
            fn = creators[kind]
            _done(fn(ns, obj, _preload_content=False, _request_timeout=self.timeout))
        except ApiException as err:
            _check_terminating(err)
            if err.status in (400, 403, 422):
                raise Refused(
                    kind, obj["metadata"]["name"], err.status, describe_error(err) or str(err.reason)
                ) from None
            if err.status != 409:
                raise

    def update(self, obj: dict[str, Any]) -> None:
        """Replace (with the resourceVersion it was read at): a 409 (changed since) or 404 (deleted
        since) is a :class:`Conflict`, so the pass stops before creating pods and runs again."""
        if obj["kind"] != "ConfigMap":
            raise ValueError(f"cannot update a {obj['kind']}")
        try:
            # The client serializes a plain dict body as it is; its annotations name only the model class.
            _done(
                self.core.replace_namespaced_config_map(
                    obj["metadata"]["name"],
                    obj["metadata"]["namespace"],
                    obj,  # type: ignore[arg-type]
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
            )
        except ApiException as err:
            if err.status in (404, 409):
                raise Conflict(f"{obj['kind']} {obj['metadata']['name']}: {err.status} {err.reason}") from None
            raise

    def delete(self, namespace: str, d: Delete) -> None:
        if d.kind != "Pod":
            raise ValueError(f"cannot delete a {d.kind}")
        opts = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=d.uid) if d.uid else None,
            grace_period_seconds=0 if d.force else None,
        )
        try:
            _done(
                self.core.delete_namespaced_pod(
                    d.name, namespace, body=opts, _preload_content=False, _request_timeout=self.timeout
                )
            )
        except ApiException as err:
            if err.status not in (404, 409):  # gone already / a newer pod holds the name
                raise

    def event(self, job: dict[str, Any], ev: Event) -> None:
        meta = job["metadata"]
        now = rfc3339(datetime.now(timezone.utc))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": ev.reason,
            "message": ev.message[:1024],
            "type": ev.type,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
        }
        try:
            # A plain dict body is serialized as it is; the client's annotations name only CoreV1Event.
            _done(
                self.core.create_namespaced_event(
                    meta["namespace"],
                    body,  # type: ignore[arg-type]
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
            )
        except ApiException as err:  # events are best effort
            log.warning("could not post event %s for %s: %s", ev.reason, meta["name"], err.reason)

    # ---- leases ----------------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self.coord.read_namespaced_lease, name, namespace)

    def write_lease(self, namespace: str, name: str, spec: dict[str, Any], old: dict[str, Any] | None) -> bool:
        """Create or replace (with the old resourceVersion); False when another replica won the race."""
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        # A plain dict body is serialized as it is; the client's annotations name only V1Lease.
        try:
            if old is None:
                _done(
                    self.coord.create_namespaced_lease(
                        namespace,
                        body,  # type: ignore[arg-type]
                        _preload_content=False,
                        _request_timeout=self.timeout,
                    )
                )
            else:
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                _done(
                    self.coord.replace_namespaced_lease(
                        name,
                        namespace,
                        body,  # type: ignore[arg-type]
                        _preload_content=False,
                        _request_timeout=self.timeout,
                    )
                )
            return True
        except ApiException as err:
            if err.status == 409:
                return False
            raise
