"""deploy/grafana/facefleet.json and deploy/prometheus.yml against the exporter.

Every query of the dashboard names only metrics the exporter exports (report.metrics'
METRICS) and only labels those metrics carry; the datasource is a variable; the
Prometheus config scrapes the controller's default port on loopback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from facefleet.report.metrics import DEFAULT_HOST, DEFAULT_PORT, EXPORTED_NAMES, METRICS

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "facefleet.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
ANY_ADDRESS = ".".join(["0"] * 4)

LABELS = {d.name: set(d.labels) for d in METRICS}
SCRAPE_LABELS = {"job", "instance"}  # Prometheus adds these to every scraped series
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
IDENTIFIER = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def targets(dashboard: dict) -> list[tuple[str, dict]]:
    return [(p["title"], t) for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names of a PromQL expression: identifiers that are not functions,
    keywords, label names (in matchers or by/without/on lists), durations or variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # dashboard variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(rf"(?<![\w.]){IDENTIFIER}", text):
        rest = text[match.end() :].lstrip()
        if not rest.startswith("(") and match.group() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """Labels an expression matches on or groups by."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    blocks = re.findall(r"\{([^}]*)\}", text)
    used = {m.group(1) for block in blocks for m in re.finditer(rf"({IDENTIFIER})\s*(?:=~|!=|!~|=)", block)}
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        used |= {name.strip() for name in group.split(",") if name.strip()}
    return used


def test_the_expression_parser_sees_metrics_not_functions_or_labels():
    expr = 'sum by (worker, node) (rate(facefleet_worker_chunks_done_total{node=~"$node"}[1m])) / on (node) foo_bar'
    assert metric_names(expr) == {"facefleet_worker_chunks_done_total", "foo_bar"}
    assert label_names(expr) == {"worker", "node"}


def test_every_query_names_exported_metrics_and_their_labels(dashboard):
    found = targets(dashboard)
    assert len(found) >= 10
    for title, target in found:
        names = metric_names(target["expr"])
        assert names, f"{title}: {target['expr']!r} names no metric"
        unknown = names - EXPORTED_NAMES
        assert not unknown, f"{title}: {sorted(unknown)} not exported by facefleet.report.metrics"
        allowed = set().union(*(LABELS[n] for n in names)) | SCRAPE_LABELS
        assert label_names(target["expr"]) <= allowed, f"{title}: {target['expr']!r}"
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend_labels <= allowed, f"{title}: legend {target['legendFormat']!r}"


def test_template_variables_read_exported_labels(dashboard):
    variables = dashboard["templating"]["list"]
    for variable in variables:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query).groups()
        assert metric in EXPORTED_NAMES and label in LABELS[metric], query


def test_the_datasource_is_a_variable(dashboard):
    sources = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert len(sources) == 1 and sources[0]["query"] == "prometheus"
    reference = {"type": "prometheus", "uid": f"${{{sources[0]['name']}}}"}
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == reference, panel["title"]
        assert all(t["datasource"] == reference for t in panel["targets"]), panel["title"]


def test_the_panels_cover_what_the_issue_asks_for(dashboard):
    queried = set().union(*(metric_names(t["expr"]) for _, t in targets(dashboard)))
    wanted = {
        "facefleet_gpu_utilization_ratio",
        "facefleet_gpu_memory_used_bytes",
        "facefleet_gpu_power_watts",
        "facefleet_gpu_temperature_celsius",
        "facefleet_job_frames_per_second",
        "facefleet_job_frames_done_total",
        "facefleet_job_chunks",
        "facefleet_queue_jobs",
        "facefleet_queue_chunks",
        "facefleet_scaling_requests_total",
        "facefleet_scaling_requested_gpus",
    }
    assert wanted <= queried, sorted(wanted - queried)
    panels = [p for p in all_panels(dashboard["panels"])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert all({"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)


def test_prometheus_scrapes_the_controller_on_loopback():
    text = PROMETHEUS.read_text()
    config = yaml.safe_load(text)
    jobs = config["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["facefleet"]
    targets_ = [t for j in jobs for sc in j["static_configs"] for t in sc["targets"]]
    assert targets_ == [f"{DEFAULT_HOST}:{DEFAULT_PORT}"]
    assert jobs[0].get("metrics_path", "/metrics") == "/metrics"
    assert ANY_ADDRESS not in text
