"""The Grafana dashboard (helm/kubeclip/dashboards/kubeclip.json) against the metric contract.

Who uses it: ``make test``. A dashboard is only checked by eye otherwise, and a renamed metric
leaves an empty panel that nobody notices. So: the JSON is valid, every PromQL expression uses
only metric names listed in docs/contracts.md and parses (each one is run through
``promtool check rules`` as a recording rule), the data source and the namespace/job selectors
are template variables that every trainer query honours, and the panels cover what the issue
asks (phases, loss, learning rate, samples/s, step time, data wait, GPU memory, eval R@k,
restarts, reconcile latency).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from devkit.controlplane import find_binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "kubeclip" / "dashboards" / "kubeclip.json"
CONTRACTS = ROOT / "docs" / "contracts.md"

# What each required panel topic must query (the list).
REQUIRED = {
    "job phases": "kubeclip_controller_jobs",
    "loss": "kubeclip_trainer_loss",
    "learning rate": "kubeclip_trainer_learning_rate",
    "samples/s": "kubeclip_trainer_samples_per_second",
    "step time": "kubeclip_trainer_step_seconds_bucket",
    "data wait": "kubeclip_trainer_data_wait_seconds_sum",
    "GPU memory": "kubeclip_trainer_gpu_memory_bytes",
    "eval R@k": "kubeclip_trainer_eval_recall",
    "restarts": "kubeclip_controller_jobs_restarted_total",
    "gain over the start model": "kubeclip_trainer_baseline_recall",
    "zero-shot accuracy": "kubeclip_trainer_zeroshot_accuracy",
    "zero-shot at the start": "kubeclip_trainer_baseline_zeroshot_accuracy",
    "reconcile latency": "kubeclip_controller_reconcile_duration_seconds_bucket",
}


def contract_metrics() -> tuple[set[str], set[str]]:
    """(all metric names, histogram names) from docs/contracts.md's "Metric names" section."""
    text = CONTRACTS.read_text()
    section = text.split("## Metric names", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(kubeclip_\w+)", section))
    histograms: set[str] = set()
    for run, _ in re.findall(r"((?:`kubeclip_\w+`,?\s*)+)\((histograms?)\)", section):
        histograms |= set(re.findall(r"`(kubeclip_\w+)`", run))
    return names, histograms


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[str, str]]:
    return [(f"{p['id']}{t['refId']}", t["expr"]) for p in panels() for t in p["targets"]]


def test_contract_parsing_finds_the_metrics():
    names, histograms = contract_metrics()
    assert len(names) >= 20
    assert "kubeclip_trainer_loss" in names
    assert histograms == {
        "kubeclip_trainer_step_seconds",
        "kubeclip_trainer_data_wait_seconds",
        "kubeclip_controller_reconcile_duration_seconds",
    }


def test_every_query_uses_contract_metrics_only():
    names, histograms = contract_metrics()
    allowed = names | {h + s for h in histograms for s in ("_bucket", "_sum", "_count")}
    used = set()
    for ref, expr in expressions():
        for metric in re.findall(r"\bkubeclip_\w+", expr):
            assert metric in allowed, f"panel {ref} queries {metric}, which docs/contracts.md does not define"
            used.add(metric)
    assert used, "no kubeclip metric queried at all"


def test_trainer_queries_honour_the_namespace_and_job_selectors():
    for ref, expr in expressions():
        for m in re.finditer(r"\bkubeclip_trainer_\w+(\{[^}]*\})?", expr):
            selector = m.group(1) or ""
            assert 'namespace=~"$namespace"' in selector, f"panel {ref}: {m.group(0)}"
            assert 'finetunejob=~"$job"' in selector, f"panel {ref}: {m.group(0)}"


def test_datasource_and_selectors_are_template_variables():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, label in (("namespace", "namespace"), ("job", "finetunejob")):
        assert variables[name]["type"] == "query"
        assert f", {label})" in variables[name]["definition"]
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]


def test_panels_cover_the_required_topics():
    exprs = " ".join(e for _, e in expressions())
    missing = [topic for topic, metric in REQUIRED.items() if not re.search(rf"\b{metric}\b", exprs)]
    assert not missing, f"no panel for: {missing}"


def test_layout_ids_unique_and_panels_do_not_overlap():
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]


def test_every_expression_parses_with_promtool(tmp_path):
    promtool = find_binary("promtool")
    concrete = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
    rules = []
    for ref, expr in expressions():
        for var, value in concrete.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"panel {ref}: unknown variable in {expr}"
        rules.append({"record": f"kubeclip:dashboard_panel:{ref.lower()}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


@pytest.mark.parametrize("bad", ["kubeclip_trainer_loss{", "rate(kubeclip_trainer_samples_total)"])
def test_promtool_rejects_a_broken_expression(tmp_path, bad):
    """The check above can fail: promtool does reject malformed PromQL."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "kubeclip:bad", "expr": bad}]}]}))
    proc = subprocess.run([str(find_binary("promtool")), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0


# The Grafana versions the dashboard is written for (README "Monitor"): schemaVersion 39 is what
# Grafana 10.4 LTS and 11.x save; older Grafana cannot load it, newer ones migrate it on load.
GRAFANA_SCHEMA_VERSION = 39
CORE_PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "table", "bargauge", "text"}  # built in since Grafana 8


def test_dashboard_is_valid_for_the_grafana_versions_it_targets():
    d = json.loads(DASHBOARD.read_text())
    assert d["schemaVersion"] == GRAFANA_SCHEMA_VERSION
    assert d["uid"]
    assert len(d["uid"]) <= 40
    panels = []
    stack = list(d["panels"])
    while stack:
        p = stack.pop()
        panels.append(p)
        stack.extend(p.get("panels", []))
    assert {p["type"] for p in panels} <= CORE_PANEL_TYPES  # no plugin panels: nothing to install
    ds = {"type": "prometheus", "uid": "${datasource}"}
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"] == ds, p["title"]
            assert all(t.get("datasource", ds) == ds and t.get("refId") for t in p["targets"]), p["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
