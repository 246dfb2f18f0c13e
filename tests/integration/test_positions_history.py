"""Positions belong to one database history: after a restore into another cluster (dump/restore,
major upgrade) whose WAL is behind, or a restore that copied the system identifier but whose WAL
is behind what was remembered, nothing is skipped or dropped, and it is said loudly (an ERROR
naming both identifiers, ``rowcast_position_history_changes_total{process}``).

The other cluster is simulated on the session's server by rewriting what rowcast stored: another
system identifier and/or positions ahead of the server's current WAL."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request

import orjson
import pytest
from prometheus_client import REGISTRY

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.pg_sink import PredictionSink, upsert
from rowcast.connectors.schema import init_database
from rowcast.connectors.truncations import record_truncation
from rowcast.core.lsn import format_lsn
from rowcast.core.prediction import PredictionRecord
from rowcast.ops.pipeline import Pipeline
from tests.helpers.kafka_reading import drain_rows
from tests.helpers.learning import fast, learned
from tests.helpers.tables import deployed_xy_table, insert_xy, watch
from tests.helpers.waiting import wait_until

OTHER_ID = "6999999999999999999"  # a system identifier no test server has
AHEAD = 1 << 40  # bytes of WAL beyond the server's current position: 256 TiB, never reached


def server_id(conn) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def wal_now(conn) -> int:
    return conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").fetchone()[0]


def history_changes(process: str) -> float:
    return REGISTRY.get_sample_value("rowcast_position_history_changes_total",
                                     {"process": process}) or 0.0


def rowcast_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("rowcast")]


def publish_all(source: CdcSource) -> int:
    total = 0
    while (n := source.poll_once()) > 0:
        total += n
    return total


@pytest.mark.parametrize("restored", ["other_cluster", "same_id_wal_behind"])
def test_source_publishes_after_a_restore_into_a_cluster_whose_wal_is_behind(
        settings, pg_conn, caplog, restored):
    table, topic = watch(settings, pg_conn, "(id int PRIMARY KEY, x float8)")
    producer = make_producer(settings)
    try:
        pg_conn.execute(f"INSERT INTO public.{table} VALUES (1, 1.0)")
        assert publish_all(CdcSource(settings, pg_conn, producer)) >= 1
        # what a restore brings along: the remembered commit LSN of the old cluster, ahead of
        # this one's WAL, under the old cluster's identifier (or, copied, this one's)
        stored = wal_now(pg_conn) + AHEAD
        pg_conn.execute("UPDATE rowcast.source_positions SET last_commit_lsn = %s::pg_lsn "
                        "WHERE slot_name = %s", (format_lsn(stored), settings.slot_name))
        if restored == "other_cluster":
            pg_conn.execute("UPDATE rowcast.source_positions SET system_identifier = %s "
                            "WHERE slot_name = %s", (OTHER_ID, settings.slot_name))
        pg_conn.execute(f"INSERT INTO public.{table} VALUES (2, 2.0), (3, 3.0)")
        before = history_changes("source")
        with caplog.at_level(logging.ERROR):
            source = CdcSource(settings, pg_conn, producer)
            publish_all(source)
    finally:
        producer.close()
    ids = sorted(r.value["after"]["id"] for r in drain_rows(settings, topic, 3))
    assert ids == [1, 2, 3]  # the new transactions were published, not skipped as replays
    errors = rowcast_errors(caplog)
    assert any(server_id(pg_conn) in m and format_lsn(stored) in m for m in errors), errors
    if restored == "other_cluster":
        assert any(OTHER_ID in m for m in errors), errors
    assert history_changes("source") == before + 1
    # the new history is remembered: a restart says nothing more and publishes nothing twice
    row = pg_conn.execute("SELECT system_identifier, last_commit_lsn < %s::pg_lsn "
                          "FROM rowcast.source_positions WHERE slot_name = %s",
                          (format_lsn(stored), settings.slot_name)).fetchone()
    assert row == (server_id(pg_conn), True)
    caplog.clear()
    producer = make_producer(settings)
    try:
        with caplog.at_level(logging.ERROR):
            assert publish_all(CdcSource(settings, pg_conn, producer)) == 0
    finally:
        producer.close()
    assert history_changes("source") == before + 1
    assert not rowcast_errors(caplog)


def prediction(deployment: str, key: int, lsn: int, version: int, value: float) -> PredictionRecord:
    now = time.time_ns() // 1000
    return PredictionRecord(deployment, "linear_regression", version, "public", "t", {"id": key},
                            value, value, lsn, now, now)


def stored_prediction(conn, deployment: str, key: int) -> float:
    return conn.execute("SELECT prediction FROM rowcast.predictions WHERE deployment = %s "
                        "AND pk = %s::jsonb", (deployment, orjson.dumps({"id": key}).decode())
                        ).fetchone()[0]


def test_sink_stores_new_predictions_after_a_restore_into_another_cluster(settings, pg_conn,
                                                                         caplog):
    init_database(pg_conn, settings)
    deployment = f"hist_{settings.slot_name}"
    PredictionSink(settings, pg_conn, None, None).run(_set())  # the sink ran here before
    # what a restore brings along: the old cluster's predictions, far ahead of this WAL, and
    # the identifier of the cluster they were written in
    old_lsn = wal_now(pg_conn) + AHEAD
    upsert(pg_conn, [prediction(deployment, k, old_lsn, 5, 1.0) for k in (1, 2)])
    # and a TRUNCATE of the old cluster, as far ahead: kept, it would refuse this table's rows
    truncated = ("public", "t")
    record_truncation(pg_conn, [truncated], old_lsn + 1)
    if pg_conn.execute("SELECT to_regclass('rowcast.position_histories')").fetchone()[0]:
        pg_conn.execute("UPDATE rowcast.position_histories SET system_identifier = %s "
                        "WHERE owner = 'predictions'", (OTHER_ID,))
    before = history_changes("sink")
    with caplog.at_level(logging.ERROR):
        PredictionSink(settings, pg_conn, None, None).run(_set())  # a sink starting after it
    # this cluster scores the rows again: lower LSNs, a model version restarted at 1
    upsert(pg_conn, [prediction(deployment, 1, wal_now(pg_conn), 1, 2.0)])
    assert stored_prediction(pg_conn, deployment, 1) == 2.0  # not kept as "older"
    assert pg_conn.execute("SELECT count(*) FROM rowcast.truncations WHERE schema_name = %s "
                           "AND table_name = %s", truncated).fetchone()[0] == 0
    assert stored_prediction(pg_conn, deployment, 2) == 1.0
    errors = rowcast_errors(caplog)
    assert any(OTHER_ID in m and server_id(pg_conn) in m for m in errors), errors
    assert history_changes("sink") == before + 1


def _set() -> threading.Event:
    stop = threading.Event()
    stop.set()
    return stop


def learner_history_changes(settings) -> float:
    try:
        with urllib.request.urlopen(f"http://{settings.bind_host}:"
                                    f"{settings.learner_metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1
    match = re.search(r'rowcast_position_history_changes_total\{process="learner"\} (\S+)', text)
    return float(match.group(1)) if match else 0


@pytest.mark.timeout(300)
def test_learner_learns_new_labels_after_a_restore_into_another_cluster(settings, pg_conn,
                                                                        tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "history", "history")
    names = ("source", "worker", "learner")
    with Pipeline(settings, tmp_path / "logs", names) as pipeline:
        insert_xy(pg_conn, table, range(1, 11))
        wait_until(lambda: learned(pg_conn, "history") == 10, timeout_s=120,
                   message=lambda: pipeline.log_tail("learner"))
    # the checkpoint as a restore brings it: the old cluster's identifier, positions ahead
    state = pg_conn.execute("SELECT state FROM rowcast.model_versions WHERE deployment = "
                            "'history' ORDER BY version DESC LIMIT 1").fetchone()[0]
    assert state["high_water"], state
    ahead = wal_now(pg_conn) + AHEAD
    state["high_water"] = {k: [ahead, ahead, 1] for k in state["high_water"]}
    state["system_identifier"] = OTHER_ID
    pg_conn.execute("UPDATE rowcast.model_versions SET state = %s::jsonb WHERE deployment = "
                    "'history'", (orjson.dumps(state).decode(),))
    with Pipeline(settings, tmp_path / "logs2", names) as pipeline:
        insert_xy(pg_conn, table, range(11, 21))
        wait_until(lambda: learned(pg_conn, "history") == 20, timeout_s=120,
                   message=lambda: pipeline.log_tail("learner"))
        assert learner_history_changes(settings) == 1
        log = (tmp_path / "logs2" / "learner.log").read_text()
        line = next((x for x in log.splitlines() if "ERROR" in x and OTHER_ID in x), None)
        assert line is not None and server_id(pg_conn) in line, log[-3000:]
    state = pg_conn.execute("SELECT state FROM rowcast.model_versions WHERE deployment = "
                            "'history' ORDER BY version DESC LIMIT 1").fetchone()[0]
    assert state["system_identifier"] == server_id(pg_conn)
    assert all(v[0] < ahead for v in state["high_water"].values()), state  # a new epoch
