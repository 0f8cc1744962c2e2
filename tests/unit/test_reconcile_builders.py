"""The pure builders (controller/builders.py): env per rank, securityContext, owner refs, volumes."""

from __future__ import annotations

from controller import builders, naming
from kubeclip.api import parse_job_spec

JOB = {
    "metadata": {"name": "pen", "namespace": "ml", "uid": "u-1"},
    "spec": {
        "image": "reg/trainer:1",
        "imagePullPolicy": "IfNotPresent",
        "model": {"name": "ViT-B-32"},
        "dataset": {"trainCsv": "/data/t.csv"},
        "output": {"path": "/data/out"},
        "numNodes": 3,
        "numProcPerNode": 4,
        "resources": {"requests": {"cpu": "8", "nvidia.com/gpu": 4}, "limits": {"memory": "64Gi"}},
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "ds"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
        "env": [
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
        "priorityClassName": "high",
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "regcred"}],
    },
}


def _pod(i, attempt=0):
    return builders.pod(JOB, parse_job_spec(JOB["spec"]), i, attempt, "reg/trainer:1")


def _env(p):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in p["spec"]["containers"][0]["env"]}


def test_env_per_rank_is_pytorchjob_and_torchrun_style():
    for i in range(3):
        env = _env(_pod(i))
        master = "pen-node-0.pen.ml.svc"
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == master
        assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "23456"
        assert env["WORLD_SIZE"] == "12"
        assert env["PET_NNODES"] == "3"
        assert env["RANK"] == env["NODE_RANK"] == env["PET_NODE_RANK"] == str(i)
        assert env["NPROC_PER_NODE"] == env["PET_NPROC_PER_NODE"] == "4"
        assert env["KUBECLIP_JOB_NAME"] == "pen"
        assert env["KUBECLIP_NAMESPACE"] == "ml"
        assert env["KUBECLIP_JOB_UID"] == "u-1"  # owns the output directory (trainer.ownership)
        assert env["NCCL_DEBUG"] == "WARN"
        assert env["TOKEN"] == {"secretKeyRef": {"name": "s", "key": "k"}}


def test_pod_identity_dns_and_command():
    p = _pod(1, attempt=2)
    assert p["metadata"]["name"] == "pen-node-1"
    assert p["metadata"]["namespace"] == "ml"
    labels = p["metadata"]["labels"]
    assert labels[naming.LABEL_JOB] == "pen"
    assert labels[naming.LABEL_INDEX] == "1"
    assert labels[naming.LABEL_ATTEMPT] == "2"
    assert p["spec"]["hostname"] == "pen-node-1"
    assert p["spec"]["subdomain"] == "pen"
    c = p["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "trainer.node", "/etc/kubeclip/job.yaml"]
    assert p["spec"]["restartPolicy"] == "Never"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert [x["containerPort"] for x in c["ports"]] == [9090]
    assert [x["containerPort"] for x in _pod(0)["spec"]["containers"][0]["ports"]] == [23456, 9090]


def test_restricted_security_context():
    p = _pod(0)
    psc, csc = p["spec"]["securityContext"], p["spec"]["containers"][0]["securityContext"]
    assert psc["runAsNonRoot"]
    assert psc["runAsUser"] == 1000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["runAsNonRoot"]
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_no_service_account_token_unless_the_job_names_a_service_account():
    assert "automountServiceAccountToken" not in _pod(0)["spec"]
    assert _pod(0)["spec"]["serviceAccountName"] == "trainer"
    spec = {k: v for k, v in JOB["spec"].items() if k != "serviceAccountName"}
    p = builders.pod({**JOB, "spec": spec}, parse_job_spec(spec), 0, 0, "reg/trainer:1")
    assert p["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in p["spec"]


def test_owner_reference_controls_and_blocks_deletion():
    for obj in (_pod(0), builders.configmap(JOB), builders.service(JOB, parse_job_spec(JOB["spec"]))):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "kubeclip.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "pen",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_gpus_follow_num_proc_per_node_and_scheduling_passes_through():
    p = _pod(0)
    res = p["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "4"
    assert res["requests"]["nvidia.com/gpu"] == "4"
    assert res["limits"]["memory"] == "64Gi"
    assert res["requests"]["cpu"] == "8"
    s = p["spec"]
    assert s["nodeSelector"] == {"gpu": "h100"}
    assert s["tolerations"][0]["operator"] == "Exists"
    assert "nodeAffinity" in s["affinity"]
    assert s["priorityClassName"] == "high"
    assert s["serviceAccountName"] == "trainer"
    assert s["imagePullSecrets"] == [{"name": "regcred"}]
    assert s["containers"][0]["imagePullPolicy"] == "IfNotPresent"


def test_no_gpu_resources_unless_asked():
    spec = {k: v for k, v in JOB["spec"].items() if k != "resources"}
    p = builders.pod({**JOB, "spec": spec}, parse_job_spec(spec), 0, 0, "img")
    assert "resources" not in p["spec"]["containers"][0]


def test_volumes_keep_their_source_and_add_config_and_shm():
    p = _pod(0)
    vols = {v["name"]: v for v in p["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "ds"}}
    assert vols["kubeclip-config"] == {"name": "kubeclip-config", "configMap": {"name": "pen-config"}}
    assert vols["kubeclip-shm"]["emptyDir"] == {"medium": "Memory"}
    mounts = {m["name"]: m for m in p["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["kubeclip-config"]["mountPath"] == "/etc/kubeclip"
    assert mounts["kubeclip-config"]["readOnly"]
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}


def test_headless_service_publishes_not_ready_addresses():
    svc = builders.service(JOB, parse_job_spec(JOB["spec"]))
    assert svc["metadata"]["name"] == "pen"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {naming.LABEL_JOB: "pen"}
    assert svc["spec"]["publishNotReadyAddresses"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {23456, 9090}


def test_longest_allowed_name_fits_a_hostname():
    name = "a" * naming.MAX_JOB_NAME
    assert len(naming.pod_name(name, 1023)) == 63


def test_termination_grace_period_is_the_specs_and_torchrun_waits_as_long():
    """SIGTERM -> SIGKILL leaves the ranks time to finish a step and checkpoint (trainer.preemption)."""
    import pytest

    from kubeclip.api import ConfigError

    p = _pod(0)
    assert p["spec"]["terminationGracePeriodSeconds"] == 300  # the documented default
    assert _env(p)["PET_SHUTDOWN_TIMEOUT"] == "300"
    spec = parse_job_spec({**JOB["spec"], "terminationGracePeriodSeconds": 900})
    p = builders.pod(JOB, spec, 1, 0, "reg/trainer:1")
    assert p["spec"]["terminationGracePeriodSeconds"] == 900
    assert _env(p)["PET_SHUTDOWN_TIMEOUT"] == "900"
    for bad in (0, 86401, "1h"):
        with pytest.raises(ConfigError, match="terminationGracePeriodSeconds"):
            parse_job_spec({**JOB["spec"], "terminationGracePeriodSeconds": bad})
    with pytest.raises(ConfigError, match="PET_SHUTDOWN_TIMEOUT"):
        parse_job_spec({**JOB["spec"], "env": [{"name": "PET_SHUTDOWN_TIMEOUT", "value": "5"}]})
