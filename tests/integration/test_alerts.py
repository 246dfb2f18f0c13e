"""deploy/prometheus/alerts.yml on a real Prometheus (Debian's ``prometheus`` binary) scraping a
running pipeline with the shipped deploy/prometheus.yml: a paused sink fires the stage and
process alerts, which resolve once it resumes; a garbage record fires the dead-letter alert.

The rules are the shipped ones with every ``for:`` shortened (and scrape/evaluation every
second): what fires here is the production expression, on production metrics, sooner.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
import yaml

from rowcast.connectors.kafka_clients import make_producer
from rowcast.ops.devstack.process import free_port
from rowcast.ops.pipeline import Pipeline
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).parents[2]
PROMETHEUS = shutil.which("prometheus")
TOKEN = "alerts-test-token"
TEST_FOR = "3s"  # long enough to pass through pending, short enough for a test

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Debian's prometheus package: run `make setup` "
    "(scripts/install-system-deps.sh); tests/unit/test_alert_rules.py fails without it")


class Prometheus:
    """A private Prometheus on 127.0.0.1: its own folder, port, config and rules."""

    def __init__(self, settings, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule["for"] = TEST_FOR
        (folder / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (folder / "token").write_text(TOKEN)
        config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(folder / "alerts.yml")]
        ports = {"rowcast-source": settings.source_metrics_port,
                 "rowcast-worker": settings.worker_metrics_port,
                 "rowcast-learner": settings.learner_metrics_port,
                 "rowcast-sink": settings.sink_metrics_port,
                 "rowcast-dashboard": settings.dashboard_port}
        for job in config["scrape_configs"]:  # the shipped jobs, pointed at this pipeline
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
            job["authorization"]["credentials_file"] = str(folder / "token")
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "prometheus.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
                 f"--storage.tsdb.path={folder / 'data'}",
                 f"--web.listen-address={self.base.removeprefix('http://')}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as response:
                return orjson.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            return None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def targets(self) -> dict[str, str]:
        """job -> health ("up", "down", "unknown")."""
        body = self.get("/api/v1/targets") or {"data": {"activeTargets": []}}
        return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}

    def alerts(self, state: str = "firing") -> list[dict[str, str]]:
        """Labels of the alerts in ``state``, each with its alertname."""
        body = self.get("/api/v1/alerts") or {"data": {"alerts": []}}
        return [a["labels"] for a in body["data"]["alerts"] if a["state"] == state]

    def firing(self, alertname: str, **labels: str) -> bool:
        return any(a["alertname"] == alertname and all(a.get(k) == v for k, v in labels.items())
                   for a in self.alerts())

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def tails(pipeline: Pipeline) -> str:
    return "\n".join(f"--- {name}\n{pipeline.log_tail(name, 30)}" for name in pipeline.procs)


@pytest.fixture
def alerted_settings(settings):
    # STOP (12 s without a commit) before the group drops the paused member (45 s); the token
    # guards every /metrics, as in docker-compose.yml
    return settings.model_copy(update={"lag_window_s": 4.0, "lag_stop_after_s": 12.0,
                                       "kafka_session_timeout_s": 45.0,
                                       "dashboard_token": TOKEN})


@pytest.fixture
def prometheus(alerted_settings, tmp_path) -> Iterator[Prometheus]:
    server = Prometheus(alerted_settings, tmp_path / "prometheus")
    try:
        wait_until(server.ready, timeout_s=60, interval_s=0.2, message=server.log_tail)
        yield server
    finally:
        server.stop()


@pytest.mark.faults  # SIGSTOP/SIGCONT of a real process, like test_operator_surface's verdicts
@pytest.mark.timeout(480)
def test_alerts_fire_on_a_real_prometheus_when_a_stage_stops_and_resolve(
        alerted_settings, pg_conn, pg_server, prometheus, tmp_path):
    settings = alerted_settings
    table = deployed_xy_table(settings, pg_conn, "alerted", "alerts")
    stop = threading.Event()

    def write() -> None:  # rows keep arriving, so a paused stage falls behind
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            i = 1000
            while not stop.wait(0.05):
                insert_xy(conn, table, range(i, i + 3))
                i += 3

    def scored() -> int:
        return pg_conn.execute("SELECT count(*) FROM rowcast.predictions WHERE deployment = "
                               "'alerted'").fetchone()[0]

    writer = threading.Thread(target=write)
    with Pipeline(settings, tmp_path / "logs",
                  ("source", "worker", "learner", "sink", "dashboard")) as pipeline:
        sink_pid = pipeline.procs["sink"].pid
        try:
            writer.start()
            wait_until(lambda: scored() > 30, timeout_s=180, message=lambda: tails(pipeline))
            # every shipped job scraped with the token
            wait_until(lambda: set(prometheus.targets().values()) == {"up"}
                       and len(prometheus.targets()) == 5, timeout_s=90,
                       message=lambda: f"{prometheus.targets()}\n{prometheus.log_tail()}")
            stage_alerts = {"RowcastStageStalled", "RowcastStageStopped", "RowcastStageDown",
                            "RowcastProcessDown"}
            # healthy and flowing: none of them (start-up may have stalled a stage briefly)
            wait_until(lambda: not [a for a in prometheus.alerts()
                                    if a["alertname"] in stage_alerts],
                       timeout_s=90, interval_s=0.5, message=lambda: str(prometheus.alerts()))

            os.killpg(sink_pid, signal.SIGSTOP)
            try:
                sink = {"group": settings.sink_group}
                wait_until(lambda: prometheus.firing("RowcastStageStalled", **sink),
                           timeout_s=60, interval_s=0.5,
                           message=lambda: f"{prometheus.alerts('pending')} "
                                           f"{prometheus.alerts()}")
                # a frozen process answers no scrape either
                # (once timed out at 30 s in CI on a loaded box: the message says why next time)
                wait_until(lambda: prometheus.firing("RowcastProcessDown", job="rowcast-sink"),
                           timeout_s=60, interval_s=0.5,
                           message=lambda: f"pending {prometheus.alerts('pending')}\n"
                                           f"firing {prometheus.alerts()}\n"
                                           f"targets {prometheus.targets()}\n"
                                           f"{prometheus.log_tail()}")
                wait_until(lambda: prometheus.firing("RowcastStageStopped", **sink),
                           timeout_s=40, interval_s=0.5, message=lambda: str(prometheus.alerts()))
                fired = prometheus.alerts()
                assert {a["severity"] for a in fired if a.get("group") == settings.sink_group} \
                    == {"warning", "critical"}
                # the scorer and the learner kept consuming: only the sink is named
                assert not [a for a in fired if a["alertname"].startswith("RowcastStage")
                            and a["group"] != settings.sink_group], fired
            finally:
                os.killpg(sink_pid, signal.SIGCONT)
            wait_until(lambda: not [a for a in prometheus.alerts()
                                    if a["alertname"] in stage_alerts],
                       timeout_s=120, interval_s=0.5,
                       message=lambda: f"{prometheus.alerts()}\n{pipeline.log_tail('sink')}")

            # a record that is not JSON on the watched table's topic: the scorer's first dead
            # letter of this kind (a new series at 1, which increase() alone cannot see)
            assert not prometheus.firing("RowcastDeadLettersGrowing")
            producer = make_producer(settings)
            try:
                producer.send(settings.source_topic("public", table), key=b"x", value=b"{not json")
                producer.flush()
            finally:
                producer.close()
            wait_until(lambda: prometheus.firing("RowcastDeadLettersGrowing", stage="score",
                                                 reason="bad_envelope", job="rowcast-worker"),
                       timeout_s=60, interval_s=0.5,
                       message=lambda: f"{prometheus.alerts('pending')} {prometheus.alerts()}\n"
                                       f"{pipeline.log_tail('worker')}")
        finally:
            stop.set()
            if writer.is_alive():
                writer.join()
