"""docker-compose.yml, Prometheus's scrape config and the Grafana dashboard agree with the code
(no Docker engine here, so these are checked as files against rowcast's own definitions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import rowcast.core.metrics  # noqa: F401  (registers rowcast's metrics)
from rowcast.core.settings import Settings
from rowcast.ops.cli import app

ROOT = Path(__file__).parents[2]


def rowcast_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("rowcast_"):
            names |= {family.name, f"{family.name}_total", f"{family.name}_bucket",
                      f"{family.name}_count", f"{family.name}_sum"}
    return names


def test_compose_runs_real_commands_and_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name, service in compose["services"].items():
        if service.get("image") == "rowcast:local":
            assert service["command"][0] in commands, name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    assert {"rowcast-source", "rowcast-worker", "rowcast-learner", "rowcast-sink",
            "rowcast-dashboard", "prometheus",
            "grafana"} <= set(compose["services"])


def test_prometheus_scrapes_every_rowcast_process_on_its_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    s = Settings()
    assert targets == {f"rowcast-source:{s.source_metrics_port}",
                       f"rowcast-worker:{s.worker_metrics_port}",
                       f"rowcast-sink:{s.sink_metrics_port}",
                       f"rowcast-learner:{s.learner_metrics_port}",
                       f"rowcast-dashboard:{s.dashboard_port}"}


def test_grafana_dashboard_queries_only_metrics_rowcast_exports() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "rowcast.json").read_text())
    known = rowcast_metric_names()
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\browcast_[a-z_]+", target["expr"])}
    assert used and used <= known, used - known
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("verdict", "slot", "lag", "throughput", "prediction"):
        assert topic in titles
