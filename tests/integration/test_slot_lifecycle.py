"""Slot and publication lifecycle on the real server: clear refusals, drop, heartbeats, messages."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from rowcast.connectors import heartbeat
from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import check_server, ensure_slot, watch_table
from rowcast.core.errors import SourceError
from rowcast.ops.devstack.postgres import PostgresServer
from rowcast.ops.devstack.process import free_port
from tests.helpers.waiting import wait_until


def slots(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")}


def test_wal_level_other_than_logical_is_refused_with_the_fix(services_dir: Path):
    server = PostgresServer(services_dir / f"replica_{uuid.uuid4().hex[:6]}" / "data", free_port(),
                            fast=True, wal_level="replica")
    server.start()
    try:
        with (psycopg.connect(server.dsn, autocommit=True) as conn,
              pytest.raises(SourceError, match="wal_level is 'replica'.*wal_level = logical")):
            check_server(conn)
    finally:
        server.stop()


def test_a_role_without_replication_is_refused(pg_server, pg_conn):
    role = f"app_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE ROLE {role} LOGIN NOREPLICATION")
    try:
        dsn = pg_server.dsn.replace("postgres@", f"{role}@")
        with (psycopg.connect(dsn, autocommit=True) as conn,
              pytest.raises(SourceError, match="REPLICATION attribute")):
            check_server(conn)
    finally:
        pg_conn.execute(f"DROP ROLE {role}")


def test_exhausted_replication_slots_are_refused_with_the_fix(settings, pg_conn, pg_server):
    limit = int(pg_conn.execute("SHOW max_replication_slots").fetchone()[0])
    with psycopg.connect(pg_server.dsn, autocommit=True) as holder:
        # temporary slots vanish with this session, whatever happens below
        for i in range(limit - len(slots(pg_conn))):
            holder.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput', true)",
                           (f"filler_{uuid.uuid4().hex[:6]}_{i}",))
        with pytest.raises(SourceError, match="raise max_replication_slots"):
            ensure_slot(pg_conn, settings.slot_name, settings.publication_name)


def test_drop_removes_slot_publication_and_bookkeeping(settings, pg_conn):
    init_database(pg_conn, settings)
    heartbeat.beat(pg_conn, settings.slot_name)
    env = {**os.environ, **settings.to_env()}
    refused = subprocess.run([sys.executable, "-m", "rowcast", "drop"], env=env, input="n\n",
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and settings.slot_name in slots(pg_conn)
    done = subprocess.run([sys.executable, "-m", "rowcast", "drop", "--yes"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert settings.slot_name not in slots(pg_conn)
    assert pg_conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s",
                           (settings.publication_name,)).fetchone()[0] == 0
    assert pg_conn.execute("SELECT count(*) FROM rowcast.heartbeats WHERE slot_name = %s",
                           (settings.slot_name,)).fetchone()[0] == 0
    again = subprocess.run([sys.executable, "-m", "rowcast", "drop", "--yes"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr  # idempotent
    assert settings.postgres_dsn.get_secret_value() not in done.stdout + done.stderr


@pytest.fixture
def idle_source(settings, pg_conn):
    table = f"idle_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY)")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    producer = make_producer(settings)
    yield CdcSource(settings, pg_conn, producer)
    producer.close()


def test_heartbeats_give_slot_lag_in_seconds_on_an_idle_table(settings, pg_conn, idle_source):
    source = idle_source
    heartbeat.beat(pg_conn, settings.slot_name)
    source.poll_once()
    assert slot_lag(pg_conn, settings.slot_name).behind_seconds == 0.0
    # the source stops reading: the marker written now ages while the slot stays behind it
    heartbeat.beat(pg_conn, settings.slot_name)
    wait_until(lambda: slot_lag(pg_conn, settings.slot_name).behind_seconds >= 1.0, timeout_s=10)
    lag = slot_lag(pg_conn, settings.slot_name)
    assert lag.behind_bytes > 0 and lag.behind_seconds < 10
    assert source.poll_once() == 0  # nothing to publish, but the slot moves past the markers
    after = slot_lag(pg_conn, settings.slot_name)
    assert after.behind_seconds == 0.0 and after.behind_bytes < lag.behind_bytes
    # confirmed markers are pruned at the next beat, the newest one kept
    for _ in range(3):
        heartbeat.beat(pg_conn, settings.slot_name)
        source.poll_once()
    assert pg_conn.execute("SELECT count(*) FROM rowcast.heartbeats WHERE slot_name = %s",
                           (settings.slot_name,)).fetchone()[0] <= 2


def test_other_apps_logical_messages_do_not_hold_the_slot(settings, pg_conn, idle_source):
    source = idle_source
    for i in range(3):
        pg_conn.execute("SELECT pg_logical_emit_message(false, 'someone.else', %s)", (str(i),))
    assert source.poll_once() == 0
    assert slot_lag(pg_conn, settings.slot_name).behind_bytes < 1000
