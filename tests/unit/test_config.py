"""The FineTuneJob spec model: defaults, strictness, paths in errors, manifests, the example."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeclip.api import (
    CLUSTER_KEYS,
    ConfigError,
    Progress,
    TrainerSpec,
    load_manifest,
    parse_manifest,
    parse_spec,
)

REPO = Path(__file__).resolve().parents[2]

MINIMAL = {"model": {"name": "ViT-B-32"}, "dataset": {"trainCsv": "/data/train.csv"}, "output": {"path": "/out"}}


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.dataset.imageColumn == "filepath"
    assert spec.dataset.captionColumn == "caption"
    assert spec.dataset.separator is None  # detected from the header
    assert spec.training.warmupSteps is None  # 5% of the steps
    assert spec.training.gradAccumSteps == 1
    assert spec.metrics.port == 9090
    assert (spec.numNodes, spec.numProcPerNode) == (1, 1)


def test_unknown_key_is_rejected_with_its_path():
    bad = dict(MINIMAL, training={"batchSzie": 8})
    with pytest.raises(ConfigError) as err:
        parse_spec(bad)
    assert "spec.training.batchSzie" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("training", "where"),
    [
        ({"batchSize": 0}, "spec.training.batchSize"),
        ({"epochs": "many"}, "spec.training.epochs"),
        ({"precision": "fp8"}, "spec.training.precision"),
        ({"learningRate": -1}, "spec.training.learningRate"),
        ({"lockImage": True, "lockText": True}, "nothing would be trained"),
        ({"lockImageUnlockedGroups": 2}, "lockImageUnlockedGroups is set but lockImage is false"),
        ({"lockText": True, "lockTextUnlockedLayers": -1}, "spec.training.lockTextUnlockedLayers"),
        ({"lockTextUnlockedLayers": 1}, "lockTextUnlockedLayers is set but lockText is false"),
    ],
)
def test_bad_values_name_the_key(training, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        parse_spec(dict(MINIMAL, training=training))


def test_both_towers_locked_with_unlocked_groups_is_a_partial_fine_tune():
    t = parse_spec(dict(MINIMAL, training={"lockImage": True, "lockText": True, "lockTextUnlockedLayers": 2})).training
    assert t.lockImage
    assert t.lockText
    assert t.lockTextUnlockedLayers == 2
    assert t.lockImageUnlockedGroups == 0
    assert (t.localLoss, t.gatherWithGrad) == (False, False)  # open_clip's defaults


def test_missing_required_keys():
    with pytest.raises(ConfigError) as err:
        parse_spec({"model": {"name": "x"}})
    assert "spec.dataset" in str(err.value)
    assert "spec.output" in str(err.value)


def test_separator_must_be_one_character():
    with pytest.raises(ConfigError, match=r"spec\.dataset\.separator"):
        parse_spec(dict(MINIMAL, dataset={"trainCsv": "a.csv", "separator": ",,"}))


def test_cluster_keys_are_ignored_by_the_trainer():
    spec = dict(MINIMAL, image="kubeclip/trainer:1", resources={"limits": {"nvidia.com/gpu": 1}}, runPolicy={})
    assert set(spec) - set(MINIMAL) <= CLUSTER_KEYS
    assert isinstance(parse_spec(spec), TrainerSpec)


def test_manifest_kind_and_name():
    name, spec = parse_manifest(
        {"apiVersion": "kubeclip.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "cats"}, "spec": MINIMAL}
    )
    assert name == "cats"
    assert spec.model.name == "ViT-B-32"
    with pytest.raises(ConfigError, match="expected apiVersion"):
        parse_manifest({"apiVersion": "batch/v1", "kind": "Job", "spec": MINIMAL})


def test_load_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_manifest(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_manifest(bad)


def test_the_local_example_is_a_valid_manifest():
    name, spec = load_manifest(REPO / "examples" / "local-cpu.yaml")
    assert name == "local-cpu"
    assert spec.numProcPerNode == 2
    assert spec.model.name.startswith("local-dir:")
    assert (REPO / spec.model.name[len("local-dir:") :] / "open_clip_config.json").is_file()


def test_progress_round_trips_with_the_trainer_fields():
    p = Progress(phase="training", step=3, totalSteps=10, metricsPort=1234)
    assert Progress.model_validate_json(p.model_dump_json()) == p
