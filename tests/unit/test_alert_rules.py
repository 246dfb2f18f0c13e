"""deploy/prometheus/alerts.yml: valid for Prometheus (`promtool check rules`), each alert
firing and staying quiet as its unit tests say (`promtool test rules`), on metrics rowcast
exports, with commands the operator can run, and wired into prometheus.yml and the compose file.

promtool comes with Debian's ``prometheus`` package, which ``make setup``
(scripts/install-system-deps.sh) installs: without it these tests fail rather than skip, since
a skipped check would pass CI with rules nobody ran.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from prometheus_client import REGISTRY

import rowcast.core.metrics  # noqa: F401  (registers rowcast's metrics)
from rowcast.ops.cli import app

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
CONFIG = ROOT / "deploy" / "prometheus.yml"
# Prometheus's own series and functions the rules use besides rowcast's metrics
PROMQL_WORDS = {"up", "increase", "changes", "time", "max", "by", "on", "and", "or",
                "group_left"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: run `make setup` (scripts/install-system-deps.sh installs "
                    "Debian's prometheus package)", pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"]]
    for rule in rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no quiet case"


def rowcast_cli_commands() -> set[str]:
    """`rowcast X` and `rowcast GROUP X` for every command the CLI has."""
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    for group in app.registered_groups:
        names |= {f"{group.name} {c.name or c.callback.__name__}"
                  for c in group.typer_instance.registered_commands}
    return names


def test_every_alert_waits_has_a_severity_and_tells_what_to_run() -> None:
    commands = rowcast_cli_commands()
    groups = {g.name for g in app.registered_groups}
    for rule in rules():
        name = rule["alert"]
        assert re.fullmatch(r"Rowcast[A-Z][A-Za-z]+", name), name
        assert "for" in rule, f"{name}: no `for:` (one bad sample would page someone)"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        text = rule["annotations"]["summary"] + " " + rule["annotations"]["description"]
        named = re.findall(r"`rowcast ([a-z-]+)(?: ([a-z-]+))?", rule["annotations"]["description"])
        assert named, f"{name}: its description names no `rowcast ...` command to run"
        for first, second in named:
            command = f"{first} {second}" if first in groups else first
            assert command in commands, f"{name}: `rowcast {command}` is no rowcast command"
        assert "{{" in text, f"{name}: says nothing about which group/deployment/process"


def exported_series() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("rowcast_"):
            names.add(family.name)
            if family.type == "counter":  # prometheus_client serves *_total and *_created
                names |= {f"{family.name}_total", f"{family.name}_created"}
    return names


def test_alerts_query_only_metrics_rowcast_exports() -> None:
    exported = exported_series()
    for rule in rules():
        expr = re.sub(r"\[[^]]*\]|\{[^}]*\}", "", rule["expr"])  # ranges, label matchers
        used = {w for w in re.findall(r"\b[a-z_][a-z0-9_]*\b", expr)} - PROMQL_WORDS
        used -= {"job", "instance", "group", "deployment", "detector", "stage", "reason"}
        assert used <= exported, f"{rule['alert']}: {used - exported} is not exported"


def test_prometheus_config_loads_the_rules(tmp_path: Path) -> None:
    """prometheus.yml names the rules relative to itself; `promtool check config` follows that
    path (on a copy whose token file exists: the real one is written by the container)."""
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["prometheus/alerts.yml"]
    token = tmp_path / "token"
    token.write_text("t")
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus").mkdir()
    shutil.copy(RULES, tmp_path / "prometheus" / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_compose_mounts_the_rules_where_prometheus_yml_looks_for_them() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["prometheus"]
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("."):  # a bind mount: it must exist in the repository
            assert (ROOT / source).is_file(), f"{volume}: {source} is missing"
            mounts[target] = (ROOT / source).resolve()
    config_flag = next(part for part in " ".join(service["command"]).split()
                       if part.startswith("--config.file="))
    config_path = PurePosixPath(config_flag.split("=", 1)[1])
    assert mounts[str(config_path)] == CONFIG.resolve()
    for rule_file in yaml.safe_load(CONFIG.read_text())["rule_files"]:
        in_container = str(config_path.parent / rule_file)
        assert mounts.get(in_container) == RULES.resolve(), (in_container, mounts)
