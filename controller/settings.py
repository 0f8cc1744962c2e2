"""The controller's settings: one dataclass, the only place an operator option is declared.

Who uses it and why it exists: :mod:`controller.cli` turns every field into a command-line
option (``kubeclip operator`` and ``python -m controller``) and calls :meth:`Settings.load`;
:func:`controller.operator.main` hands the result to every part (leader election, resync loop,
progress reader, builders), so tunables live in one documented place instead of module globals.
Each field says its unit (the ``_s`` suffix: seconds), its default and why it exists; its
metadata holds the help text, the flags when they differ from ``--field-name`` and the
environment variable that sets it. The environment variables exist for the chart (POD_NAMESPACE
from the downward API, the NetworkPolicy settings) and for tests (shorter lease and restart
delays; KUBECLIP_PROGRESS_HOST/PORT point the progress reader at a local HTTP server, since no
kubelet runs pods there). A flag wins over its environment variable, which wins over the default.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_type_hints


class SettingsError(ValueError):
    """A flag or environment variable whose value does not parse (the message names it)."""


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of label -> value (the chart's controller selector labels), sorted."""
    try:
        data = json.loads(text or "{}")
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return tuple(sorted((str(k), str(v)) for k, v in data.items()))


def _identity() -> str:
    """The pod name (downward API) plus a random suffix, so a restarted container never renews its
    predecessor's lease by accident."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.urandom(4).hex()}"


def setting(
    default: Any = MISSING,
    *,
    help: str,
    env: str | None = None,
    flags: tuple[str, ...] = (),
    parse: Callable[[str], Any] | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A :class:`Settings` field: ``help`` for ``--help``; ``flags`` replace the default
    ``--field-name``; ``env`` also sets it; ``parse`` reads its text form (flag or environment) where
    the type alone does not say how."""
    metadata = {"help": help, "env": env, "flags": flags, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Every tunable of the operator process; ``Settings()`` is the defaults, with no environment read
    (only :meth:`load` reads it), so tests build exactly the settings they name."""

    namespaces: tuple[str, ...] = setting(
        (),
        help="Watch only this namespace (repeatable); none: every namespace.",
        flags=("--namespace", "-n"),
    )
    all_namespaces: bool = setting(
        False,
        help="Watch every namespace, even with --namespace (the default when no --namespace is given).",
        flags=("--all-namespaces", "-A"),
    )
    #: Default 8080 (docs/contracts.md).
    metrics_port: int = setting(8080, help="Prometheus /metrics port (0: off).")
    health_port: int = setting(8081, help="/healthz and /readyz port (0: off).")
    #: Only the holder of the Lease reconciles, so several replicas are safe.
    leader_election: bool = setting(
        True, help="Reconcile only while holding the Lease.", flags=("--leader-election/--no-leader-election",)
    )
    lease_name: str = setting("kubeclip-controller", help="Name of the leader-election Lease.")
    #: The chart passes --lease-namespace; POD_NAMESPACE (downward API) covers a bare Deployment.
    lease_namespace: str = setting("default", help="Namespace of the Lease.", env="POD_NAMESPACE")
    identity: str = setting(
        help="Lease holder identity (default: $POD_NAME or the host name, plus a random suffix).",
        factory=_identity,
    )
    #: client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    lease_duration_s: float = setting(
        15.0,
        help="Seconds a lease stays valid without renewal; a standby takes over after this.",
        env="KUBECLIP_LEASE_DURATION_SECONDS",
    )
    renew_deadline_s: float = setting(
        10.0,
        help="Seconds the leader may fail to renew before it gives up (and exits).",
        env="KUBECLIP_RENEW_DEADLINE_SECONDS",
    )
    retry_period_s: float = setting(
        2.0, help="Seconds between lease acquire/renew attempts.", env="KUBECLIP_RETRY_PERIOD_SECONDS"
    )
    default_image: str = setting(
        "",
        help="Trainer image for jobs without spec.image; empty: such jobs fail with InvalidSpec.",
        env="KUBECLIP_DEFAULT_IMAGE",
    )
    progress_interval_s: float = setting(
        15.0,
        help="Seconds between progress polls of running jobs (each poll is a full reconcile pass).",
        env="KUBECLIP_PROGRESS_INTERVAL_SECONDS",
    )
    full_resync_s: float = setting(
        300.0,
        help="Seconds between passes over every job, the safety net behind the watches.",
        env="KUBECLIP_FULL_RESYNC_SECONDS",
    )
    #: Tests only: no kubelet runs the pods there, so a local HTTP server answers for node 0.
    progress_host: str | None = setting(
        None,
        help="Host to read node 0's /progress from (default: the pod IP).",
        env="KUBECLIP_PROGRESS_HOST",
    )
    progress_port: int | None = setting(
        None,
        help="Port to read node 0's /progress from (default: spec.metrics.port).",
        env="KUBECLIP_PROGRESS_PORT",
    )
    #: A hung trainer must not stall the pass long.
    progress_timeout_s: float = setting(2.0, help="HTTP timeout of one progress read, seconds.")
    #: controller/netpol.py: a job's pods accept connections only from its own pods, the
    #: monitoring namespace and this controller.
    network_policy: bool = setting(
        True,
        help="Create one NetworkPolicy per job ($KUBECLIP_NETWORK_POLICY=0 turns it off).",
        env="KUBECLIP_NETWORK_POLICY",
        flags=("--network-policy/--no-network-policy",),
    )
    monitoring_namespace: str = setting(
        "monitoring",
        help="The namespace whose Prometheus may scrape the trainers' metrics port; empty: none.",
        env="KUBECLIP_MONITORING_NAMESPACE",
    )
    #: Empty: any pod of the controller's namespace (``lease_namespace``) may read /progress.
    controller_pod_labels: tuple[tuple[str, str], ...] = setting(
        (),
        help="Labels of this controller's pods (a JSON object): only they may read the trainers' /progress.",
        env="KUBECLIP_CONTROLLER_POD_LABELS",
        parse=_labels,
    )
    #: The Job controller's 10 s -> 6 min; tests shorten them.
    restart_delay_s: float = setting(
        10.0,
        help="Seconds before a job's next attempt after a restart, doubling per restart up to the cap.",
        env="KUBECLIP_RESTART_DELAY_SECONDS",
    )
    restart_delay_cap_s: float = setting(
        360.0, help="Upper bound of the restart delay, seconds.", env="KUBECLIP_RESTART_DELAY_CAP_SECONDS"
    )
    #: A hung connection must not stall a pass, or the leader's renewals, for ever.
    api_timeout_s: float = setting(
        10.0, help="Timeout of every API call the controller makes, seconds.", env="KUBECLIP_API_TIMEOUT_SECONDS"
    )
    #: kopf's executor; API calls are blocking.
    workers: int = setting(16, help="Threads running reconcile passes.", env="KUBECLIP_WORKERS")
    log_level: str = setting("INFO", help="DEBUG, INFO, WARNING or ERROR.")

    @property
    def clusterwide(self) -> bool:
        """Watch every namespace: asked for, or no namespace named."""
        return self.all_namespaces or not self.namespaces

    @classmethod
    def load(cls, given: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
        """Settings from the command line's values (``given``: field name -> value, None when the flag
        was not given; text for fields with a ``parse``) and the environment, else the defaults."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name, env, parse = f.name, f.metadata["env"], f.metadata["parse"]
            value = given.get(name)
            if isinstance(value, list):
                values[name] = tuple(value)  # a repeatable flag
            elif value is not None:
                values[name] = _parse(parse, value, f"--{name.replace('_', '-')}") if parse else value
            elif env and env in environ and (environ[env] or hints[name] is str):
                values[name] = _parse(parse or _parser(hints[name]), environ[env], f"${env}")
        return cls(**values)


def _parse(parse: Callable[[str], Any], text: str, source: str) -> Any:
    try:
        return parse(text)
    except ValueError as err:
        raise SettingsError(f"{source}={text!r}: {err}") from None


def _bool(text: str) -> bool:
    if text.strip().lower() in ("0", "false", "no", "off"):
        return False
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _parser(hint: Any) -> Callable[[str], Any]:
    """How an environment variable's text becomes a field of type ``hint`` (an empty text never
    gets here unless the field is a plain ``str``: empty means unset)."""
    for kind in (bool, int, float):
        if hint in (kind, kind | None):
            return _bool if kind is bool else kind
    return str
