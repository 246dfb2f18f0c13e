"""The cluster tier: rowcast on a 3-broker KRaft cluster while brokers are lost and restarted.

Run with ``pytest -m cluster``. Three Apache Kafka nodes (broker + controller each, replication
factor 3 and 2 in-sync replicas required by the cluster's defaults) run on loopback from the same
jars as the session broker; rowcast gets all three as its bootstrap list and no replication
setting of its own, so every topic it (and faust) creates must come out with 3 replicas.

While a writer inserts labelled rows: kill -9 of the broker leading most partitions of the source
and predictions topics (the leaders move; rows are predicted while it is down), then its restart;
later a rolling restart of all three nodes, one by one, each only after every partition is back
in sync. After each fault: every row inserted before it has its prediction and its label learned
(the time that took is the fault's recovery time), ``rowcast reconcile`` is OK with the writer
held. At the end every row has exactly one prediction and every label was learned exactly once.
Whatever happens, no broker is left running.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from kafka import KafkaAdminClient

from rowcast.connectors.kafka_clients import make_admin, topic_layouts
from rowcast.connectors.slot import drop_slot_and_publication
from rowcast.core.settings import Settings
from rowcast.ops.devstack.kafka import KafkaCluster
from rowcast.ops.devstack.postgres import PostgresServer
from rowcast.ops.devstack.process import free_port
from rowcast.ops.pipeline import PROCESSES, Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.learning import counters, fast, latest_version
from tests.helpers.tables import deployed_xy_table
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.cluster]

RATE = 40  # rows per second


@pytest.fixture(scope="module")
def cluster(services_dir: Path) -> Iterator[KafkaCluster]:
    nodes = KafkaCluster(services_dir / "cluster", [free_port() for _ in range(3)],
                         [free_port() for _ in range(3)], cache_dir=Settings().cache_dir)
    try:
        nodes.start(timeout_s=180)
        yield nodes
    finally:
        try:
            nodes.stop()
        finally:
            nodes.kill()  # whatever did not stop: no broker outlives the tier
        assert not nodes.is_running()


@pytest.fixture
def on_cluster(pg_server: PostgresServer, cluster: KafkaCluster,
               services_dir: Path) -> Iterator[Settings]:
    """Settings for one test on the cluster (the session's Postgres, names of its own)."""
    name = f"c_{uuid.uuid4().hex[:8]}"
    s = Settings(postgres_dsn=pg_server.dsn, kafka_bootstrap=cluster.bootstrap,
                 topic_prefix=name, slot_name=name, publication_name=name,
                 state_dir=services_dir / "state" / name, worker_web_port=free_port(),
                 source_metrics_port=free_port(), worker_metrics_port=free_port(),
                 sink_metrics_port=free_port(), learner_metrics_port=free_port(),
                 dashboard_port=free_port(), snapshot_key_file=services_dir / "snapshot.key",
                 _env_file=None)
    yield s
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        drop_slot_and_publication(conn, s.slot_name, s.publication_name)
        if conn.execute("SELECT to_regclass('rowcast.deployments')").fetchone()[0]:
            conn.execute("TRUNCATE rowcast.deployments, rowcast.model_versions, "
                         "rowcast.model_control, rowcast.pending_labels")


class Writer(threading.Thread):
    """Inserts labelled rows at a steady rate until stopped; held while a reconciliation runs."""

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.table = dsn, table
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.next_id = 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                if not self.paused.is_set():
                    i = self.next_id
                    conn.execute(f"INSERT INTO {self.table} VALUES (%s, %s, %s)",
                                 (i, float(i % 17), 2.0 * (i % 17)))
                    self.next_id += 1
                self.stop.wait(1 / RATE)


def leaders(settings: Settings, topics: list[str]) -> dict[int, list[str]]:
    """Broker id -> the partitions (``topic/partition``) it leads now."""
    admin = KafkaAdminClient(**settings.kafka_client_config(), request_timeout_ms=5000)
    try:
        led: dict[int, list[str]] = {}
        for topic in admin.describe_topics(topics):
            for p in topic["partitions"]:
                led.setdefault(p["leader_id"], []).append(f"{topic['name']}/{p['partition_index']}")
        return led
    finally:
        admin.close()


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(query).fetchone()[0]


@pytest.mark.timeout(1500)
def test_a_lost_broker_and_a_rolling_restart_lose_nothing(on_cluster, pg_conn, pg_server,
                                                          cluster, tmp_path):
    settings = fast(on_cluster)
    table = deployed_xy_table(settings, pg_conn, "clustered", "clustered")
    dsn = pg_server.dsn
    rows_sql = f"SELECT count(*) FROM {table}"
    predicted_sql = "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'clustered'"
    learned_sql = ("SELECT coalesce(max(samples), 0) FROM rowcast.model_versions "
                   "WHERE deployment = 'clustered'")
    source = settings.source_topic("public", table)
    predictions = settings.predictions_topic("clustered")
    report: list[tuple[str, int, int, float, str]] = []
    restarted: list[str] = []
    writer = Writer(dsn, table)

    def kill_leader() -> tuple[int, str]:
        led = leaders(settings, [source, predictions])
        node = max(led, key=lambda n: len(led[n]))
        cluster.node(node).kill()
        return node, f"node {node} led {', '.join(sorted(led[node]))}"

    def rolling(node: int):
        def inject() -> tuple[int, str]:
            led = leaders(settings, [source, predictions]).get(node, [])
            cluster.node(node).stop()  # controlled shutdown: leaderships move first
            return node, f"node {node} led {len(led)} source/predictions partition(s)"
        return inject

    def caught_up(before: int) -> bool:
        restarted.extend(pipeline.restart_dead())  # a service manager's restart, counted
        return min(count(dsn, predicted_sql), count(dsn, learned_sql)) >= before

    def reconciled() -> bool:
        restarted.extend(pipeline.restart_dead())
        return rowcast_cli(settings, "reconcile").returncode == 0

    def logs() -> str:
        return "\n".join(f"--- {n}\n{pipeline.log_tail(n, 30)}" for n in pipeline.procs)

    faults = [("kill -9 leading broker", kill_leader)]
    faults += [(f"rolling restart, node {n}", rolling(n)) for n in (1, 2, 3)]
    with Pipeline(settings, tmp_path / "logs", names=PROCESSES) as pipeline:
        writer.start()
        try:
            wait_until(lambda: count(dsn, predicted_sql) > 0, timeout_s=180, message=logs)
            # every topic rowcast and faust made took the cluster's replication, none was told
            admin = make_admin(settings)
            try:
                layouts = topic_layouts(admin, [t for t in admin.list_topics()
                                                if t.startswith(settings.topic_prefix)])
            finally:
                admin.close()
            assert {source, predictions, settings.models_topic,
                    settings.labels_topic("clustered")} <= {t.topic for t in layouts}
            assert {(t.replicas, t.min_insync) for t in layouts} == {(3, 2)}, layouts
            for name, inject in faults:
                time.sleep(3)  # rows stream for a while before each fault
                before = count(dsn, rows_sql)
                started = time.monotonic()
                node, what = inject()
                # with the node down: every earlier row predicted and learned on two brokers
                wait_until(lambda before=before: caught_up(before), timeout_s=240,
                           interval_s=0.2, message=lambda name=name: f"{name}: {logs()}")
                recovery = round(time.monotonic() - started, 1)
                back = time.monotonic()  # then the node returns and catches up before the next
                cluster.node(node).start(timeout_s=180)
                cluster.wait_in_sync(timeout_s=180)
                what += f"; back in sync {time.monotonic() - back:.0f} s after its start"
                writer.paused.set()
                wait_until(reconciled, timeout_s=240, interval_s=1.0,
                           message=lambda: rowcast_cli(settings, "reconcile").stdout)
                state = orjson.loads(rowcast_cli(settings, "reconcile", "--json").stdout)[0]
                assert state["missing"] == 0 and state["predicted"] == state["rows"]
                report.append((name, state["rows"], state["predicted"], recovery, what))
                writer.paused.clear()
        finally:
            writer.stop.set()
            writer.join(timeout=10)
        wait_until(reconciled, timeout_s=240, interval_s=1.0,
                   message=lambda: rowcast_cli(settings, "reconcile").stdout)
        state = orjson.loads(rowcast_cli(settings, "reconcile", "--json").stdout)[0]
    rows = count(dsn, rows_sql)
    assert state["ok"] and state["missing"] == 0 and state["rows"] == rows == state["predicted"]
    _, samples, metrics = latest_version(pg_conn, "clustered")
    assert samples == rows == metrics["labels"]  # every label learned exactly once
    assert counters(pg_conn, "clustered")["learned"] == rows
    print(f"\n{'fault':<26} {'rows':>6} {'predicted':>9} {'recovery s':>10}  detail")
    for name, rows_, predicted, took, what in report:
        print(f"{name:<26} {rows_:>6} {predicted:>9} {took:>10}  {what}")
    print(f"rows {rows}, learned {samples}, processes restarted by the supervisor: "
          f"{restarted or 'none'}")


def test_deploy_warns_on_thin_durability_and_status_names_odd_topics(on_cluster, pg_conn):
    """A deployment whose topics would accept a write held by one broker gets one warning
    line; a topic made earlier with one replica is named by ``rowcast status``."""
    settings = on_cluster.model_copy(update={"topic_min_insync_replicas": 1})
    admin = make_admin(settings)
    try:
        admin.create_topics({settings.dlq_topic: {"num_partitions": 1, "replication_factor": 1}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    table = f"thin_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    done = deploy_cli(settings, "thin", "--table", table, "--target", "y")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "3-broker cluster" in warnings[0], done.stderr
    status = rowcast_cli(on_cluster, "status", "--json", "--samples", "1")
    layout = orjson.loads(status.stdout)["topic_layout"]
    # (it takes the brokers' min.insync.replicas, 2: with one replica it refuses every write)
    assert f"topic {settings.dlq_topic}: 1 replica(s), expected 3" in layout, status.stdout
    # the deployment's own topics hold 3 replicas but accept writes on 1: named too
    assert f"topic {settings.labels_topic('thin')}: min.insync.replicas 1, expected 2" in layout
    text = rowcast_cli(on_cluster, "status", "--samples", "1").stdout
    assert "TOPIC LAYOUT:" in text
