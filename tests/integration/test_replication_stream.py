"""The source reading its slot over the streaming replication protocol (what ``rowcast source``
does by default): the same promises as the peek, against the real server and broker."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.replication import ReplicationStream
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import watch_table
from rowcast.core.errors import RetryableError
from tests.helpers.kafka_reading import afters, drain_rows
from tests.helpers.source_doubles import RefusingProducer
from tests.helpers.waiting import wait_until


@pytest.fixture
def watched(settings, pg_conn):
    table = f"rs_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, ts timestamptz, "
                    "d date, iv interval, f float8)")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": 1}), [topic])
    return table, topic


@pytest.fixture
def stream(settings):
    opened: list[ReplicationStream] = []

    def start() -> ReplicationStream:
        opened.append(ReplicationStream(settings.postgres_dsn.get_secret_value(),
                                        settings.slot_name, settings.publication_name))
        return opened[-1]

    yield start
    for s in opened:  # an open walsender keeps the slot active: the teardown could not drop it
        s.close()


def confirmed(conn: psycopg.Connection, slot: str) -> int:
    return conn.execute("SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots "
                        "WHERE slot_name = %s", (slot,)).fetchone()[0]


def flushed(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT (pg_current_wal_flush_lsn() - '0/0')::bigint").fetchone()[0]


def run_until(source: CdcSource, done) -> None:
    """The source's real loop in a thread until ``done()``."""
    stop = threading.Event()
    loop = threading.Thread(target=source.run, args=(stop,), daemon=True)
    loop.start()
    try:
        wait_until(done, timeout_s=30)
    finally:
        stop.set()
        loop.join(10)


def test_interleaved_transactions_arrive_in_commit_order_and_are_confirmed_after(
        settings, pg_conn, watched, stream):
    """A transaction that began first but committed last comes last, whole; the slot is
    confirmed past it only once Kafka has it."""
    table, topic = watched
    dsn = settings.postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as early:  # not autocommit: one open transaction
        early.execute(f"INSERT INTO public.{table} (id) VALUES (1)")
        pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (2)")
        early.execute(f"INSERT INTO public.{table} (id) VALUES (3)")
        early.commit()
    after_commits = flushed(pg_conn)
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer, stream=stream())
    run_until(source, lambda: confirmed(pg_conn, settings.slot_name) >= after_commits)
    producer.close()
    assert [a["id"] for a in afters(drain_rows(settings, topic, 3))] == [2, 1, 3]


def test_values_are_printed_the_same_whatever_the_database_defaults(settings, pg_conn, watched,
                                                                   stream):
    """The walsender prints values under the settings its startup options pin, not the
    database's (a DMY DateStyle, another IntervalStyle and time zone)."""
    table, topic = watched
    db = pg_conn.info.dbname
    defaults = {"DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
                "TimeZone": "Asia/Tokyo", "extra_float_digits": "0"}
    try:
        for name, value in defaults.items():
            pg_conn.execute(f"ALTER DATABASE {db} SET {name} = '{value}'")
        with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as app:
            app.execute(f"INSERT INTO public.{table} VALUES (1, '2024-03-04 05:06:07.5+00', "
                        "'2024-03-04', '1 day 02:03:04', 0.1)")
        producer = make_producer(settings)
        source = CdcSource(settings, pg_conn, producer, stream=stream())
        run_until(source, lambda: confirmed(pg_conn, settings.slot_name) >= flushed(pg_conn))
        producer.close()
    finally:
        for name in defaults:
            pg_conn.execute(f"ALTER DATABASE {db} RESET {name}")
    (row,) = afters(drain_rows(settings, topic, 1))
    assert row["d"] == 19786  # days since 1970-01-01, as Debezium writes a date
    assert row["f"] == 0.1
    assert row["ts"] == "2024-03-04T05:06:07.500000Z"
    assert row["iv"] == 93784000000  # µs, Debezium's MicroDuration


def test_nothing_is_confirmed_that_kafka_did_not_acknowledge(settings, pg_conn, watched, stream):
    """Refused sends end the round with an error and leave the slot where it was; a new
    stream (the restarted process) hands the rows out again and they are published."""
    table, topic = watched
    before = confirmed(pg_conn, settings.slot_name)
    pg_conn.execute(f"INSERT INTO public.{table} (id) SELECT g FROM generate_series(1, 20) g")
    target = flushed(pg_conn)

    refused = CdcSource(settings, pg_conn, RefusingProducer(), stream=stream())
    with pytest.raises(RetryableError, match="did not acknowledge"):
        wait_until(lambda: refused.poll_once() > 0, timeout_s=20)
    refused.stream.close()
    assert confirmed(pg_conn, settings.slot_name) == before

    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer, stream=stream())
    run_until(source, lambda: confirmed(pg_conn, settings.slot_name) >= target)
    producer.close()
    assert sorted(a["id"] for a in afters(drain_rows(settings, topic, 20))) == list(range(1, 21))


def test_an_idle_stream_lets_the_wal_of_other_tables_go(settings, pg_conn, watched, stream):
    """Writes to tables nobody watches are confirmed as the server reports them decoded, so
    the slot does not pin their WAL."""
    pg_conn.execute("CREATE TABLE IF NOT EXISTS public.rs_unwatched (id serial PRIMARY KEY, "
                    "x text)")
    pg_conn.execute("INSERT INTO public.rs_unwatched (x) SELECT repeat('x', 200) "
                    "FROM generate_series(1, 2000)")
    target = flushed(pg_conn)
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer, stream=stream())
    run_until(source, lambda: confirmed(pg_conn, settings.slot_name) >= target)
    producer.close()


def test_a_second_stream_on_a_busy_slot_is_a_one_line_retryable_error(settings, pg_conn,
                                                                      watched, stream):
    """Two sources on one slot: the second is refused (the supervisor retries it), clearly."""
    stream()
    with pytest.raises(RetryableError, match=r"could not stream slot .*active") as refused:
        stream()
    assert "\n" not in str(refused.value)
