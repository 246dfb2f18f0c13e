"""The provisioned Grafana dashboard (deploy/grafana/dashboards/rowcast.json) queries only what
rowcast exports, and carries the model operations of issue 17: drift markers on the model metric
chart, champion next to challengers, promotions.

No Grafana runs here, so the dashboard is checked as a file: every PromQL expression (panels,
annotations, template variables) may name only metrics that rowcast.core.metrics defines, under
the sample names prometheus-client really exposes (a typo in a panel otherwise shows an empty
chart forever), and when ``promtool`` is installed every expression must parse."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import rowcast.core.metrics  # noqa: F401  (registers rowcast's metrics)

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "rowcast.json"
DATASOURCE = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Series names prometheus-client exposes per metric type (a Counter "x_total" is the family "x").
SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created")}

# Grafana's built-in and dashboard variables, replaced by plausible values so promtool can parse.
GRAFANA_VARIABLES = {"$__rate_interval_ms": "60000", "$__rate_interval": "1m",
                     "$__interval_ms": "60000", "$__interval": "1m", "$__range": "30m",
                     "$deployment": ".*", "$metric": ".*"}


def exported_series() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("rowcast_"):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def annotation_expressions(board: dict[str, Any]) -> list[str]:
    return [a["target"]["expr"] for a in board["annotations"]["list"]
            if a.get("datasource", {}).get("type") == "prometheus"]


def variable_queries(board: dict[str, Any]) -> list[str]:
    return [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside string literals (label values and
    regexes may say rowcast_ without naming a metric)."""
    return set(re.findall(r"\b(rowcast_[a-zA-Z0-9_]*)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)))


def panel(board: dict[str, Any], title_part: str) -> dict[str, Any]:
    found = [p for p in board["panels"] if title_part in p["title"].lower()]
    assert len(found) == 1, (title_part, [p["title"] for p in board["panels"]])
    return found[0]


def test_metric_names_are_parsed_outside_label_values() -> None:
    assert metric_names('rate(rowcast_scored_total{deployment="rowcast_x"}[1m])') == {
        "rowcast_scored_total"}
    assert metric_names("rowcast_drift_total and rowcast_drift_created") == {
        "rowcast_drift_total", "rowcast_drift_created"}


def test_every_expression_names_only_metrics_rowcast_exports() -> None:
    board = dashboard()
    known = exported_series()
    assert "rowcast_drift_created" in known and "rowcast_model_metric" in known
    expressions = panel_expressions(board) + annotation_expressions(board)
    expressions += variable_queries(board)
    for expr in expressions:
        names = metric_names(expr)
        assert names, f"no rowcast metric in {expr!r}"
        assert names <= known, f"{sorted(names - known)} in {expr!r} are not exported"


def test_panels_keep_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]
    first_model_panel = min(p["gridPos"]["y"] for p in panels if p["id"] >= 8)
    assert all(p["gridPos"]["y"] + p["gridPos"]["h"] <= first_model_panel
               for p in panels if p["id"] < 8), "model panels go below the existing ones"


def test_model_metric_chart_carries_drift_and_promotion_markers() -> None:
    board = dashboard()
    chart = panel(board, "drift markers")
    assert chart["type"] == "timeseries"
    assert any("rowcast_model_metric" in metric_names(t["expr"]) for t in chart["targets"])
    markers = {a["name"]: a for a in board["annotations"]["list"]}
    for name, counter, labels in (("Drift", "rowcast_drift", {"deployment", "detector"}),
                                  ("Promotions", "rowcast_promotions", {"deployment", "how"})):
        marker = markers[name]
        assert marker["enable"] and marker["datasource"]["uid"] == "prometheus"
        expr = marker["target"]["expr"]
        # increase() sees each later detection; the _created branch sees the first one, whose
        # series appears already at 1 (prometheus-client creates a labelled child on first inc()).
        assert {f"{counter}_total", f"{counter}_created"} <= metric_names(expr), expr
        assert "increase(" in expr and "$deployment" in expr
        assert set(marker["tagKeys"].split(",")) == labels
        assert chart["id"] in marker["filter"]["ids"] and not marker["filter"]["exclude"]
        assert set(marker["filter"]["ids"]) <= {p["id"] for p in board["panels"]}


def test_champion_and_challengers_side_by_side_per_deployment_and_metric() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"deployment", "metric"} <= set(variables)
    assert "rowcast_model_metric" in variables["metric"]["query"]["query"]
    assert "$deployment" in variables["metric"]["query"]["query"]
    for title in ("champion and challengers over time", "champion and challengers now"):
        side_by_side = panel(board, title)
        exprs = " ".join(t["expr"] for t in side_by_side["targets"])
        assert {"rowcast_model_metric", "rowcast_challenger_metric"} <= metric_names(exprs)
        for target in side_by_side["targets"]:
            assert 'deployment=~"$deployment"' in target["expr"], target["expr"]
            assert 'metric=~"$metric"' in target["expr"], target["expr"]
    now = panel(board, "champion and challengers now")
    assert now["type"] == "table" and all(t.get("instant") for t in now["targets"])


def test_promotions_are_counted_per_deployment_and_how() -> None:
    stat = panel(dashboard(), "promotions")
    assert stat["type"] == "stat"
    assert any("rowcast_promotions_total" in metric_names(t["expr"]) and "how" in t["expr"]
               for t in stat["targets"])


def test_panels_and_annotations_use_the_provisioned_datasource() -> None:
    uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    board = dashboard()
    for p in board["panels"]:
        assert p["datasource"]["uid"] == uid, p["title"]
        assert all(t["datasource"]["uid"] == uid for t in p["targets"]), p["title"]
    for a in board["annotations"]["list"]:
        assert a["datasource"]["uid"] in (uid, "-- Grafana --"), a["name"]
    for v in board["templating"]["list"]:
        assert v["datasource"]["uid"] == uid, v["name"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_expression_parses(tmp_path: Path) -> None:
    """promtool checks PromQL without a server when the expressions are recording rules."""
    board = dashboard()
    rules = []
    for i, expr in enumerate(panel_expressions(board) + annotation_expressions(board)):
        expr = substitute(expr)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"grafana:expr_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def substitute(expr: str) -> str:
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    return expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize(("name", "counter", "label"), [("Drift", "rowcast_drift", "detector"),
                                                         ("Promotions", "rowcast_promotions",
                                                          "how")])
def test_markers_show_the_first_and_later_events_only_when_they_happen(
        tmp_path: Path, name: str, counter: str, label: str) -> None:
    """On synthetic series scraped every 15 s: nothing before the first event; a marker when the
    series appears already at 1 (increase() alone misses it); none while the count stands
    still; one again when it grows."""
    marker = {a["name"]: a for a in dashboard()["annotations"]["list"]}[name]
    expr = f"count({substitute(marker['target']['expr'])})"
    labels = f'job="rowcast-learner",instance="l:9467",deployment="d",{label}="x"'
    rules = tmp_path / "none.yml"
    rules.write_text("groups: []\n")
    present = [{"labels": "{}", "value": 1}]
    cases = [("200s", []), ("300s", present), ("450s", []), ("630s", present), ("870s", [])]
    tests = tmp_path / "markers_test.yml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(rules)], "evaluation_interval": "15s",
        "tests": [{"interval": "15s",
                   "input_series": [
                       # absent until 300 s, 1 until 585 s, then 2
                       {"series": f"{counter}_total{{{labels}}}", "values": "_x19 1x19 2x19"},
                       {"series": f"{counter}_created{{{labels}}}", "values": "_x19 300x39"}],
                   "promql_expr_test": [{"expr": expr, "eval_time": t, "exp_samples": samples}
                                        for t, samples in cases]}]}))
    done = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
