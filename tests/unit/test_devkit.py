"""The development kit's own promises: one wait_for that says why it gave up, and job documents the API accepts.

Who uses it: ``make test``. Every cluster, controller, trainer and e2e test, the demos and the
benches build their FineTuneJobs with ``devkit.jobs`` and poll with ``devkit.wait``; a factory that
wrote a job the CRD rejects, or a wait that returned early or hid what it last saw, would show up
far from its cause.
"""

from __future__ import annotations

from pathlib import Path

import crd_jsonschema  # tests/crd_jsonschema.py: pytest puts tests/ first on the import path for tests/conftest.py
import pytest
import yaml

from devkit import jobs
from devkit.paths import REPO
from devkit.tiny_model import TINY_CONFIG, tiny_model
from devkit.wait import WaitTimeout, wait_for
from kubeclip.api import FineTuneJobSpec, parse_spec

CRD = yaml.safe_load((REPO / "helm/kubeclip/files/crd-finetunejobs.yaml").read_text())


def test_wait_for_returns_the_first_truthy_value_and_retries_through_errors():
    calls = []

    def ok():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("not up yet")
        return len(calls) >= 3 and {"phase": "Running"}

    assert wait_for(ok, 5, "the job Running", every_s=0.01) == {"phase": "Running"}
    assert len(calls) == 3


def test_wait_for_names_what_it_waited_for_the_last_value_and_the_explanation():
    with pytest.raises(WaitTimeout) as caught:
        wait_for(lambda: [], 0.05, "pods of job-a", every_s=0.01, explain=lambda: "kubectl describe: 0/1 nodes")
    message = str(caught.value)
    assert message.startswith("pods of job-a: not within 0 s (last: [])"), message
    assert "kubectl describe: 0/1 nodes" in message
    assert isinstance(caught.value, AssertionError)  # a test that waits in vain fails as an assertion


def test_a_local_job_is_what_the_trainer_reads(tmp_path: Path):
    doc = jobs.local_job(
        "local",
        model=tiny_model(tmp_path),
        pretrained=tmp_path / "start.safetensors",
        train_csv=tmp_path / "train.csv",
        val_csv=tmp_path / "val.csv",
        dataset={"separator": ","},
        output=tmp_path / "out",
        training={"epochs": 1, "precision": "bf16"},
        numProcPerNode=2,
    )
    spec = parse_spec(yaml.safe_load(jobs.write(doc, tmp_path / "job.yaml").read_text())["spec"])
    assert (spec.training.precision, spec.training.seed, spec.training.epochs) == ("bf16", 0, 1)
    assert spec.model.name == f"local-dir:{tmp_path / 'tiny-model'}"
    assert spec.model.pretrained == str(tmp_path / "start.safetensors")
    assert (spec.dataset.separator, spec.output.path, spec.numProcPerNode) == (",", str(tmp_path / "out"), 2)
    assert yaml.safe_load((tmp_path / "tiny-model" / "open_clip_config.json").read_text()) == TINY_CONFIG
    assert crd_jsonschema.errors(CRD, doc) == []


def test_a_cluster_job_passes_the_crd_and_the_controller_model_and_drops_keys_given_as_none():
    doc = jobs.cluster_job("c", "ns", claim="kubeclip-datasets", image=None, numNodes=3, labels={"team": "a"})
    assert doc["metadata"] == {"name": "c", "namespace": "ns", "labels": {"team": "a"}}
    assert "image" not in doc["spec"]
    assert doc["spec"]["numNodes"] == 3
    assert doc["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "kubeclip-datasets"}
    assert crd_jsonschema.errors(CRD, doc) == []
    FineTuneJobSpec.model_validate(doc["spec"])
    parse_spec(doc["spec"])
