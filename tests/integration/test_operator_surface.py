"""What operators watch, on the real pipeline: status, /metrics, verdicts that follow a stall,
and the dashboard in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import orjson
import psycopg
import pytest

from rowcast.connectors.schema import init_database
from rowcast.core.errors import ConfigError
from rowcast.ops.dashboard import Dashboard
from rowcast.ops.monitor import Monitor
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.diagnostics import logs
from tests.helpers.tables import deployed_xy_table
from tests.helpers.waiting import wait_until


def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples (every label set) in Prometheus text format."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


@pytest.fixture
def table(settings, pg_conn):
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    name = f"ops_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, x float8, y float8)")
    done = deploy_cli(settings, "watched", "--table", name, "--target", "y")
    assert done.returncode == 0, done.stderr
    return name


def insert(conn, table: str, ids: range) -> None:
    for i in ids:
        conn.execute(f"INSERT INTO public.{table} VALUES (%s, %s, %s)", (i, i, 2 * i))


def learned(conn) -> int:
    row = conn.execute("SELECT samples FROM rowcast.model_metrics WHERE deployment = 'watched'"
                       ).fetchone()
    return 0 if row is None else row[0]


def scored(conn, table: str) -> int:
    """This test's predictions only: earlier tests used the deployment name 'watched' too."""
    return conn.execute("SELECT count(*) FROM rowcast.predictions WHERE deployment = 'watched' "
                        "AND source_table = %s", (table,)).fetchone()[0]


@pytest.mark.timeout(240)
def test_status_and_metrics_of_a_running_pipeline(settings, pg_conn, table, tmp_path):
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert(pg_conn, table, range(1, 41))
        wait_until(lambda: scored(pg_conn, table) == 40, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))
        wait_until(lambda: learned(pg_conn) == 40, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        env = {**os.environ, **settings.to_env()}
        out = subprocess.run([sys.executable, "-m", "rowcast", "status", "--json", "--samples", "2"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        state = orjson.loads(out.stdout)
        assert [d["name"] for d in state["deployments"]] == ["watched"]
        watched = state["deployments"][0]
        assert watched["samples"] == 40 and watched["model_version"] >= 1
        assert set(watched["metrics"]) == {"MAE", "RMSE", "R2"}
        assert state["predictions"]["total"] >= 40 and state["latency_ms"]["p50"] > 0
        assert {s["stage"]: s["verdict"] for s in state["stages"]} == {
            "scorer": "OK", "learner": "OK", "sink": "OK"}
        assert state["slot"]["verdict"] == "OK"
        screen = subprocess.run([sys.executable, "-m", "rowcast", "status", "--samples", "1"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert "watched" in screen.stdout and "VERDICT" in screen.stdout
        assert settings.postgres_dsn.get_secret_value() not in screen.stdout + out.stdout

        host = settings.bind_host
        source = http_get(f"http://{host}:{settings.source_metrics_port}/metrics")[1].decode()
        worker = http_get(f"http://{host}:{settings.worker_metrics_port}/metrics")[1].decode()
        sink = http_get(f"http://{host}:{settings.sink_metrics_port}/metrics")[1].decode()
        learner = http_get(f"http://{host}:{settings.learner_metrics_port}/metrics")[1].decode()
        assert metric(learner, 'rowcast_learned_total{deployment="watched"}') == 40
        assert metric(learner, 'rowcast_model_version{deployment="watched"}') >= 1
        assert metric(learner, 'rowcast_model_metric{deployment="watched",metric="MAE"}') >= 0
        assert metric(worker, 'rowcast_model_version_served{deployment="watched"}') >= 0
        assert metric(source, "rowcast_source_events_total") >= 40
        assert metric(worker, 'rowcast_scored_total{deployment="watched"}') >= 40
        assert metric(sink, 'rowcast_predictions_written_total{deployment="watched"}') >= 40
        assert metric(sink, "rowcast_end_to_end_latency_seconds_count") >= 40


@pytest.mark.faults  # SIGSTOP/SIGCONT of real processes; timing-sensitive on a loaded 2-core box
@pytest.mark.timeout(300)
def test_verdicts_follow_a_paused_stage_and_return_to_ok(settings, pg_conn, pg_server, table,
                                                        tmp_path):
    # STOP (12 s without a commit) must come before the group drops the paused member (45 s)
    settings = settings.model_copy(update={"lag_window_s": 4.0, "lag_stop_after_s": 12.0,
                                           "kafka_session_timeout_s": 45.0})
    monitor = Monitor(settings)
    writing = threading.Event()
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            i = 1000
            while not stop.wait(0.05):
                if writing.is_set():
                    insert(conn, table, range(i, i + 3))
                    i += 3

    def verdict(stage: str) -> tuple[str, int | None, float]:
        s = next(s for s in monitor.sample()["stages"] if s["stage"] == stage)
        return s["verdict"], s["lag"], s.get("oldest_unconsumed_s", 0.0)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with Pipeline(settings, tmp_path / "logs") as pipeline:
            writing.set()
            wait_until(lambda: scored(pg_conn, table) > 30, timeout_s=90,
                       message=lambda: pipeline.log_tail("worker"))
            seen: dict[str, list[tuple[str, int | None, float]]] = {}
            for stage in ("sink", "worker"):
                name = "sink" if stage == "sink" else "scorer"
                pid = pipeline.procs[stage].pid
                wait_until(lambda name=name: verdict(name)[0] == "OK", timeout_s=60, interval_s=0.5)
                os.killpg(pid, signal.SIGSTOP)
                try:
                    log = seen.setdefault(name, [])
                    wait_until(lambda name=name, log=log: log.append(verdict(name)) or
                               log[-1][0] == "STOP", timeout_s=40, interval_s=0.5,
                               message=lambda log=log: str(log))
                finally:
                    os.killpg(pid, signal.SIGCONT)
                states = [v for v, _, _ in log]
                assert "STALL" in states and states.index("STALL") < states.index("STOP")
                lags = [lag for _, lag, _ in log if lag is not None]
                assert lags[-1] > lags[0]  # the lag grew while the stage was paused
                wait_until(lambda name=name: verdict(name)[0] == "OK", timeout_s=90, interval_s=0.5,
                           message=lambda name=name, stage=stage:
                               f"{verdict(name)}\n{pipeline.log_tail(stage)}")
    finally:
        stop.set()
        writer.join()
        monitor.close()


@pytest.mark.faults  # timing-sensitive on a loaded 2-core box, like its sibling above
@pytest.mark.timeout(300)
def test_a_stage_that_commits_but_falls_behind_is_warned_about(settings, pg_conn, pg_server,
                                                              tmp_path):
    """WARN: the sink commits all the time but takes one prediction per transaction
    (``ROWCAST_SINK_BATCH_SIZE=1``, a real setting), while rows arrive in batches of 200 every
    100 ms (at 50, the faster sink of issue 15 kept up); its lag grows at every sample while
    its offset moves. When the writer stops, the sink drains and the verdict returns to OK.
    One partition per topic: with several, a sink taking one record per poll drains them in
    turn and the idle ones are rightly STALL."""
    settings = settings.model_copy(update={"lag_window_s": 3.0, "lag_stop_after_s": 30.0,
                                           "sink_batch_size": 1, "topic_partitions": 1})
    table = deployed_xy_table(settings, pg_conn, "watched", "behind")
    monitor = Monitor(settings)
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            i = 1000
            while not stop.wait(0.1):
                with conn.transaction():
                    conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                                              [(j, float(j % 7), 1.0) for j in range(i, i + 200)])
                i += 200

    def sink_stage() -> tuple[str, int | None]:
        s = next(s for s in monitor.sample()["stages"] if s["stage"] == "sink")
        return s["verdict"], s["lag"]

    writer = threading.Thread(target=write)
    try:
        with Pipeline(settings, tmp_path / "logs") as pipeline:
            insert(pg_conn, table, range(1, 6))
            wait_until(lambda: scored(pg_conn, table) == 5, timeout_s=90,
                       message=lambda: logs(pipeline))
            # caught up *and committed* (the sink commits at most every 0.5 s): the window then
            # holds a zero, so the first samples after the writer starts cannot already be WARN
            wait_until(lambda: sink_stage() == ("OK", 0), timeout_s=60, interval_s=0.5)
            writer.start()
            seen: list[tuple[str, int | None]] = []
            wait_until(lambda: seen.append(sink_stage()) or seen[-1][0] == "WARN", timeout_s=90,
                       interval_s=0.5, message=lambda: str(seen))
            stop.set()
            writer.join()
            print(f"\nsink verdicts while falling behind (verdict, lag): {seen}")
            assert "STALL" not in [v for v, _ in seen]  # it kept committing all along
            lags = [lag for _, lag in seen if lag is not None]
            assert lags[-1] > lags[0]
            stored = scored(pg_conn, table)
            wait_until(lambda: scored(pg_conn, table) > stored, timeout_s=30)  # still moving
            wait_until(lambda: sink_stage()[0] == "OK", timeout_s=180, interval_s=0.5,
                       message=lambda: f"{sink_stage()}\n{pipeline.log_tail('sink')}")
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        monitor.close()


def test_dashboard_refuses_to_listen_beyond_loopback_without_a_token(settings):
    with pytest.raises(ConfigError, match="ROWCAST_DASHBOARD_TOKEN"):
        Dashboard(settings.model_copy(update={"bind_host": "0.0.0.0"}))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.timeout(240)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium (scripts/install-system-deps.sh)")
def test_dashboard_shows_live_data_in_headless_chromium(settings, pg_conn, table, tmp_path):
    settings = settings.model_copy(update={"dashboard_token": "s3cret-token"})
    base = f"http://{settings.bind_host}:{settings.dashboard_port}"
    with Pipeline(settings, tmp_path / "logs",
                  ("source", "worker", "learner", "sink", "dashboard")) as pipeline:
        insert(pg_conn, table, range(1, 26))
        wait_until(lambda: scored(pg_conn, table) == 25, timeout_s=120, message=lambda: logs(pipeline))
        wait_until(lambda: learned(pg_conn) == 25, timeout_s=60, message=lambda: logs(pipeline))

        def api() -> dict:
            status, body = http_get(f"{base}/api/state", token="s3cret-token")
            return orjson.loads(body) if status == 200 else {}

        # the page counts every prediction in the database (earlier tests' too)
        total = pg_conn.execute("SELECT count(*) FROM rowcast.predictions").fetchone()[0]
        wait_until(lambda: (api().get("latest") or {}).get("predictions", {}).get("total") == total
                   and len(api()["history"]) >= 3, timeout_s=60,
                   message=lambda: pipeline.log_tail("dashboard"))
        assert http_get(f"{base}/api/state")[0] == 401  # the token guards every endpoint
        assert http_get(f"{base}/metrics", token="s3cret-token")[1].count(b"rowcast_consumer_lag") > 0

        page = f"{base}/?token=s3cret-token"
        browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                   "--virtual-time-budget=6000", "--window-size=1280,900",
                   "--enable-logging=stderr", "--v=0"]
        dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True,
                             timeout=120)
        assert 'data-updated="1' in dom.stdout, dom.stderr[-2000:]  # the script ran and fetched
        assert f'<div class="big" id="scored-total">{total}</div>' in dom.stdout
        assert 'id="verdict-scorer">OK<' in dom.stdout and 'id="verdict-sink">OK<' in dom.stdout
        assert 'id="verdict-learner">OK<' in dom.stdout
        assert re.search(r'<span id="metric-name">watched MAE</span>', dom.stdout), \
            re.findall(r'id="metric-[a-z]+"[^<]*<', dom.stdout)
        assert "<td>watched</td>" in dom.stdout and f"<td>public.{table}</td>" in dom.stdout
        assert "<polyline" in dom.stdout  # the charts drew
        shot = tmp_path / "dashboard.png"
        subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True, timeout=120)
        assert shot.stat().st_size > 10_000
        if os.environ.get("ROWCAST_SAVE_SCREENSHOT"):
            shutil.copy(shot, os.environ["ROWCAST_SAVE_SCREENSHOT"])
