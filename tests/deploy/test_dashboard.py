"""The Grafana dashboard shipped in the chart queries only series the service really exports.

A dashboard fails silently: a renamed metric or label leaves an empty panel, not an error.
So every metric name in its PromQL (and in its template variables' queries) is checked
against the text exposition of a real `service.metrics.Metrics`, and every label it groups or
filters by against the labels that exposition carries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "helm/coldstart/dashboards/coldstart.json"

# The panels an operator needs, by title.
REQUIRED_PANELS = {
    "Request rate by method",
    "Errors by gRPC code",
    "Latency p50/p99 by method",
    "Consumer lag by partition",
    "Event-to-state freshness p50/p99",
    "Adaptation batch latency p50/p99",
    "Adaptation batch size",
    "Dead-letter rate by reason",
    "Recommend responses: cold / adapted / degraded share",
    "Online hit rate",
    "Model version",
    "Adaptations with a profile (share)",
    "Unknown feature values by feature",
    "Catalogue items by state",
    "Items registered and retired",
    "Item adaptations",
    "Item-update freshness p99",
    "New-item exposure",
}
# The series each metric type exposes, after the family name (prometheus_client's naming).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# Labels that Prometheus adds at scrape time (target labels) or that histograms carry.
SCRAPE_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint", "le"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
KEYWORDS |= {"and", "or", "unless", "offset", "inf", "nan"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(?!\s*\()")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, labels, strings or durations."""
    bare = _RANGE.sub("", _MATCHERS.sub("", _STRING.sub('""', expr)))
    bare = _GROUPING.sub("", bare)
    return {name for name in _IDENTIFIER.findall(bare) if name.lower() not in KEYWORDS}


def label_names(expr: str) -> set[str]:
    """The labels a PromQL expression filters on or groups by."""
    without_strings = _STRING.sub('""', expr)
    labels = {
        label
        for matchers in _MATCHERS.findall(without_strings)
        for label in _MATCHER_LABEL.findall(matchers)
    }
    for grouping in _GROUPING.findall(without_strings):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    return labels


def test_the_promql_helpers_find_names_and_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (method, le) (rate(a_bucket{job=~"$job", code!="OK"}'
        "[$__rate_interval]))) / ignoring (state) group_left sum(b_total) * on(x) c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert label_names(expr) == {"method", "le", "job", "code", "state", "x"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in rows."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query template variable."""
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            # label_values(metric{...}, label): the metric, and the label as a grouping.
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text)
            assert inner, f"variable {variable['name']}: unexpected query {text}"
            yield f"${variable['name']}", f"sum by ({inner[2]}) ({inner[1]})"


def exercise(metrics: Metrics) -> None:
    """One observation through each recorder, so labelled series (and their labels) appear."""
    metrics.set_model("v1", n_items=10, dim=4)
    metrics.observe_request("Recommend", "OK", 0.001)
    metrics.on_response("adapted")
    metrics.on_ingested()
    metrics.on_rejected("unknown_item")
    metrics.on_consumed(1)
    metrics.on_batch(1, 0.001)
    metrics.on_event_applied()
    metrics.on_dead_letter("bad_json")
    metrics.on_freshness(0.1)
    metrics.on_redis_error()
    metrics.on_lag(0, 1)
    metrics.on_hit(True)
    metrics.on_adapted_with_profile(1)
    metrics.on_unknown_feature_value("age")
    metrics.set_catalogue({"trained": 1, "cold": 1, "warming": 0, "retired": 0})
    metrics.on_item_registered(implicit=False)
    metrics.on_item_retired()
    metrics.on_item_adapted(1)
    metrics.on_item_freshness("warmup", 0.1)
    metrics.on_item_record_invalid("bad_json")
    metrics.on_recommended(10, 1)


@pytest.fixture(scope="module")
def exposed() -> tuple[set[str], set[str]]:
    """(series names, label names) in the exposition of a real Metrics.

    Series names come from the samples and, for a family still without samples, from its
    type, so a metric the `exercise` above misses is still known by name.
    """
    metrics = Metrics()
    exercise(metrics)
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(metrics.scrape().decode()):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def test_every_metric_the_dashboard_queries_is_exported(
    exposed: tuple[set[str], set[str]],
) -> None:
    names, _ = exposed
    used: dict[str, set[str]] = {}
    for where, expr in queries(dashboard()):
        found = metric_names(expr)
        assert found, f"{where}: no metric found in {expr}"
        for name in found:
            used.setdefault(name, set()).add(where)
    missing = {name: sorted(where) for name, where in used.items() if name not in names}
    assert not missing, f"the dashboard queries metrics the service does not export: {missing}"


def test_every_label_the_dashboard_uses_is_exported(exposed: tuple[set[str], set[str]]) -> None:
    _, labels = exposed
    used = {label for _, expr in queries(dashboard()) for label in label_names(expr)}
    unknown = sorted(used - labels - SCRAPE_LABELS)
    assert not unknown, f"the dashboard uses labels no exported series has: {unknown}"


def test_the_issue_panels_are_all_there() -> None:
    titles = {panel["title"] for panel in panels(dashboard()["panels"])}
    assert titles >= REQUIRED_PANELS, f"missing panels: {sorted(REQUIRED_PANELS - titles)}"


def test_panel_ids_are_unique_and_panels_use_the_datasource_variable() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels(board["panels"])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    for panel in panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_identity_and_variables() -> None:
    board = dashboard()
    assert (board["uid"], board["title"]) == ("coldstart", "coldstart")
    assert board["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):  # "All" matches series without the label too
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for panel in panels(board["panels"]):  # every selector scoped by both variables
        for target in panel.get("targets", []):
            for matchers in _MATCHERS.findall(target["expr"]):
                assert 'namespace=~"$namespace"' in matchers, target["expr"]
                assert 'job=~"$job"' in matchers, target["expr"]
