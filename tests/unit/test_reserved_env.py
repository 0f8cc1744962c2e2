"""spec.env cannot override what the controller sets: the topology, torchrun's ``PET_*`` flags
(e.g. ``PET_RDZV_ENDPOINT`` would point node 0's rendezvous elsewhere) and the trainer's
``KUBECLIP_*`` switches (e.g. ``KUBECLIP_PREFLIGHT_DONE`` would skip the preflight). The API model
refuses them with one line, for specs that reach the controller without the CRD's CEL rule."""

from __future__ import annotations

import pytest

from controller.crd import crd
from kubeclip.api import RESERVED_ENV, ConfigError, parse_job_spec

SPEC = {
    "image": "reg/trainer:1",
    "model": {"name": "local-dir:/data/m"},
    "dataset": {"trainCsv": "/data/train.csv"},
    "output": {"path": "/data/out"},
}


@pytest.mark.parametrize(
    "name",
    [*RESERVED_ENV, "PET_RDZV_BACKEND", "PET_RDZV_ENDPOINT", "PET_MAX_RESTARTS", "KUBECLIP_PREFLIGHT_DONE"],
)
def test_reserved_names_are_refused_with_one_line(name):
    with pytest.raises(ConfigError) as err:
        parse_job_spec({**SPEC, "env": [{"name": "OK", "value": "1"}, {"name": name, "value": "x"}]})
    text = str(err.value)
    assert f"{name} is set by the controller or reserved for it" in text
    assert "\n" not in text


@pytest.mark.parametrize("name", ["NCCL_DEBUG", "PETS", "KUBECLIPX", "HF_HOME", "pet_rdzv_backend"])
def test_other_names_are_accepted(name):
    assert parse_job_spec({**SPEC, "env": [{"name": name, "value": "1"}]}).env[0].name == name


def test_the_crd_rule_reserves_the_same_prefixes():
    env = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["env"]
    rule = env["x-kubernetes-validations"][0]["rule"]
    assert "!e.name.startsWith('PET_')" in rule
    assert "!e.name.startsWith('KUBECLIP_')" in rule
