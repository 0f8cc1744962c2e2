"""The controller's settings: one dataclass, filled from the command line and the environment.

Who uses it and why it exists: :func:`controller.operator.main` builds it once and hands it to
every part (leader election, resync loop, progress reader), so tunables live in one documented
place instead of module globals. The environment variables exist for the chart (POD_NAME,
POD_NAMESPACE from the downward API) and for tests (KUBECLIP_PROGRESS_HOST/PORT point the
progress reader at a local HTTP server, since no kubelet runs pods there).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _env_labels(name: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of label -> value (the chart's controller selector labels); empty when unset or bad."""
    try:
        data = json.loads(os.environ.get(name) or "{}")
    except ValueError:
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in data.items())) if isinstance(data, dict) else ()


@dataclass(frozen=True)
class Settings:
    #: Watched namespaces; empty with ``all_namespaces`` means cluster-wide.
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = True
    #: Prometheus metrics port (``/metrics``); 0 disables. Default 8080 (docs/contracts.md).
    metrics_port: int = 8080
    #: ``/healthz`` and ``/readyz`` port; 0 disables. Default 8081.
    health_port: int = 8081
    #: Only the holder of the Lease reconciles, so several replicas are safe.
    leader_election: bool = True
    lease_name: str = "kubeclip-controller"
    lease_namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or "default")
    #: Holder identity: the pod name (downward API) plus a random suffix so a restarted
    #: container never renews its predecessor's lease by accident.
    identity: str = field(
        default_factory=lambda: f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.urandom(4).hex()}"
    )
    #: Seconds a lease stays valid without renewal; a standby takes over after this (client-go: 15).
    lease_duration_s: float = field(default_factory=lambda: _env_float("KUBECLIP_LEASE_DURATION_SECONDS", 15.0))
    #: The leader gives up (and exits) when it could not renew for this long (client-go: 10).
    renew_deadline_s: float = field(default_factory=lambda: _env_float("KUBECLIP_RENEW_DEADLINE_SECONDS", 10.0))
    #: Seconds between acquire/renew attempts (client-go: 2).
    retry_period_s: float = field(default_factory=lambda: _env_float("KUBECLIP_RETRY_PERIOD_SECONDS", 2.0))
    #: Image for jobs without spec.image; empty makes such jobs Failed/InvalidSpec.
    default_image: str = field(default_factory=lambda: os.environ.get("KUBECLIP_DEFAULT_IMAGE", ""))
    #: Seconds between progress polls of running jobs (each poll is a full reconcile pass).
    progress_interval_s: float = field(default_factory=lambda: _env_float("KUBECLIP_PROGRESS_INTERVAL_SECONDS", 15.0))
    #: Seconds between passes over *every* job, the safety net behind the watches.
    full_resync_s: float = field(default_factory=lambda: _env_float("KUBECLIP_FULL_RESYNC_SECONDS", 300.0))
    #: Where node 0's /progress is read: pod IP and spec.metrics.port unless overridden (tests).
    progress_host: str | None = field(default_factory=lambda: os.environ.get("KUBECLIP_PROGRESS_HOST") or None)
    progress_port: int | None = field(default_factory=lambda: _env_int("KUBECLIP_PROGRESS_PORT"))
    #: HTTP timeout of one progress read, seconds: a hung trainer must not stall the pass long.
    progress_timeout_s: float = 2.0
    #: Create one NetworkPolicy per job (controller/netpol.py): its pods accept connections only from
    #: its own pods, the monitoring namespace and this controller. KUBECLIP_NETWORK_POLICY=0 turns it off.
    network_policy: bool = field(default_factory=lambda: os.environ.get("KUBECLIP_NETWORK_POLICY", "1") != "0")
    #: The namespace whose Prometheus may scrape the trainers' metrics port; empty: none.
    monitoring_namespace: str = field(
        default_factory=lambda: os.environ.get("KUBECLIP_MONITORING_NAMESPACE", "monitoring")
    )
    #: Labels of this controller's pods (JSON object, from the chart): only they, in the controller's
    #: namespace (``lease_namespace``), may read /progress. Empty: any pod of that namespace.
    controller_pod_labels: tuple[tuple[str, str], ...] = field(
        default_factory=lambda: _env_labels("KUBECLIP_CONTROLLER_POD_LABELS")
    )
    #: Delay before a job's next attempt after a restart, doubling per restart up to the cap
    #: (seconds; the Job controller's 10 s -> 6 min). Tests shorten them.
    restart_delay_s: float = field(default_factory=lambda: _env_float("KUBECLIP_RESTART_DELAY_SECONDS", 10.0))
    restart_delay_cap_s: float = field(default_factory=lambda: _env_float("KUBECLIP_RESTART_DELAY_CAP_SECONDS", 360.0))
    #: Timeout of every API call the controller makes (seconds): a hung connection must not stall
    #: a pass, or the leader's renewals, for ever.
    api_timeout_s: float = field(default_factory=lambda: _env_float("KUBECLIP_API_TIMEOUT_SECONDS", 10.0))
    #: Threads running reconcile passes (kopf's executor); API calls are blocking.
    workers: int = field(default_factory=lambda: int(_env_float("KUBECLIP_WORKERS", 16)))
    log_level: str = "INFO"
