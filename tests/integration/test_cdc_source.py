"""The CDC source against the real server and broker: envelopes, ordering, ack before advance."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import watch_table
from rowcast.core.errors import ConfigError, RetryableError, SourceError
from tests.helpers.kafka_reading import afters, drain_rows
from tests.helpers.source_doubles import RefusingProducer
from tests.helpers.waiting import wait_until


@pytest.fixture
def watched(settings, pg_conn):
    table = f"cdc_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, n numeric(30,10), "
                    "f float8, t text, b boolean, ts timestamp, tz timestamptz, missing int)")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": 1}), [topic])
    return table, topic


@pytest.mark.parametrize("source_format", ["rowcast", "debezium"])
def test_inserts_updates_deletes_become_debezium_envelopes(settings, pg_conn, watched,
                                                           source_format):
    """The same envelopes in both formats (a change batch expands to them); only the
    per-row format writes a tombstone after a delete (batch topics are not compacted)."""
    settings = settings.model_copy(update={"source_format": source_format})
    table, topic = watched
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1, 12345678901234567890.0123456789, "
                    "1.5, 'héllo', true, '2024-01-02 03:04:05.678901', "
                    "'2024-01-02 03:04:05.5+02', NULL)")
    pg_conn.execute(f"UPDATE public.{table} SET t = 'bye' WHERE id = 1")
    pg_conn.execute(f"DELETE FROM public.{table} WHERE id = 1")
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 10_000_000, timeout_s=20)
    producer.close()
    tombstones = source_format == "debezium"
    records = drain_rows(settings, topic, 3 + tombstones, tombstones=True)
    assert len(records) == 3 + tombstones
    assert all(r.batched == (source_format == "rowcast") for r in records)
    assert [r.key_doc for r in records] == [{"id": 1}] * len(records)
    c, u, d = (r.value for r in records[:3])
    if tombstones:
        assert records[3].value is None  # tombstone after the delete
    assert [c["op"], u["op"], d["op"]] == ["c", "u", "d"]
    assert c["before"] is None
    assert c["after"] == {"id": 1, "n": "12345678901234567890.0123456789", "f": 1.5, "t": "héllo",
                          "b": True, "ts": 1704164645678901, "tz": "2024-01-02T01:04:05.500000Z",
                          "missing": None}
    assert u["after"]["t"] == "bye"
    assert d["after"] is None and d["before"]["id"] == 1
    src = c["source"]
    assert (src["connector"], src["schema"], src["table"]) == ("postgresql", "public", table)
    assert src["lsn"] < u["source"]["lsn"] < d["source"]["lsn"]
    assert isinstance(src["txId"], int) and src["ts_us"] // 1000 == src["ts_ms"]


def test_slot_advances_only_after_kafka_acknowledged(settings, pg_conn, watched):
    table, topic = watched
    pg_conn.execute(f"INSERT INTO public.{table} (id) SELECT g FROM generate_series(1, 50) g")
    confirmed_before = _confirmed(pg_conn, settings.slot_name)

    with pytest.raises(RetryableError, match="did not acknowledge"):
        CdcSource(settings, pg_conn, RefusingProducer()).poll_once()
    assert _confirmed(pg_conn, settings.slot_name) == confirmed_before  # nothing was lost

    producer = make_producer(settings)
    assert CdcSource(settings, pg_conn, producer).poll_once() >= 50
    producer.close()
    assert _confirmed(pg_conn, settings.slot_name) > confirmed_before
    ids = [after["id"] for after in afters(drain_rows(settings, topic, 50))]
    assert sorted(set(ids)) == list(range(1, 51))


def test_transactions_already_published_are_dropped_after_a_replay(settings, pg_conn, watched,
                                                                 monkeypatch):
    """After a server crash the slot may hand out transactions again (its position is saved only
    at checkpoints); the source's own remembered commit LSN drops them."""
    from rowcast.connectors import slot

    table, topic = watched
    pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (1)")
    producer = make_producer(settings)
    with monkeypatch.context() as patched:
        patched.setattr(slot, "advance", lambda *args: None)  # the server "forgets" the advance
        assert CdcSource(settings, pg_conn, producer).poll_once() == 1
    pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (2)")
    restarted = CdcSource(settings, pg_conn, producer)  # loads the remembered position
    restarted.poll_once()
    producer.close()
    ids = [after["id"] for after in afters(drain_rows(settings, topic, 2))]
    assert ids == [1, 2]


def test_logging_running_xacts_lets_the_restart_lsn_catch_up(settings, pg_conn, watched):
    """Without it, each peek re-decodes all WAL since the last running-xacts record (~15 s)."""
    from rowcast.connectors import slot

    def restart_gap() -> int:
        return pg_conn.execute(
            "SELECT (confirmed_flush_lsn - restart_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = %s", (settings.slot_name,)).fetchone()[0]

    pg_conn.execute("CREATE TABLE IF NOT EXISTS public.unwatched_noise (id serial PRIMARY KEY, pad text)")
    pg_conn.execute("INSERT INTO public.unwatched_noise (pad) "
                    "SELECT repeat('x', 200) FROM generate_series(1, 20000)")
    slot.advance(pg_conn, settings.slot_name, slot.current_wal_lsn(pg_conn))
    assert restart_gap() > 1_000_000
    assert slot.log_running_xacts(pg_conn, settings.slot_name) == slot.NUDGE_LOGGED
    slot.advance(pg_conn, settings.slot_name, slot.current_wal_lsn(pg_conn))
    assert restart_gap() < 100_000
    assert pg_conn.execute("SHOW statement_timeout").fetchone()[0] == "0"


def test_writes_to_unwatched_tables_do_not_pin_wal(settings, pg_conn, watched):
    table, topic = watched
    settings = settings.model_copy(update={"source_restart_nudge_s": 0.0})
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    pg_conn.execute("CREATE TABLE IF NOT EXISTS public.elsewhere (id serial PRIMARY KEY, pad text)")
    for _ in range(5):
        pg_conn.execute("INSERT INTO public.elsewhere (pad) "
                        "SELECT repeat('x', 500) FROM generate_series(1, 5000)")
        assert source.poll_once() == 0
    assert slot_lag(pg_conn, settings.slot_name).behind_bytes < 100_000
    assert slot_lag(pg_conn, settings.slot_name).retained_bytes < 5_000_000
    # and a watched row written among unwatched ones is still published
    pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (42)")
    pg_conn.execute("INSERT INTO public.elsewhere (pad) VALUES ('after')")
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 100_000, timeout_s=20)
    producer.close()
    assert [after["id"] for after in afters(drain_rows(settings, topic, 1))] == [42]


def test_a_table_without_primary_key_is_refused(settings, pg_conn):
    table = f"nokey_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (a int)")
    with pytest.raises(SourceError, match="no primary key"):
        watch_table(pg_conn, settings.publication_name, "public", table)
    from rowcast.connectors.registry import create_deployment
    with pytest.raises(ConfigError, match="no primary key"):
        create_deployment(pg_conn, "d", table, "a", None, "linear_regression")


def _confirmed(conn, slot: str) -> int:
    return conn.execute("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint "
                        "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0]


def test_a_long_transaction_makes_the_restart_nudge_back_off(settings, pg_conn, watched):
    """Logging running transactions (a temporary slot on PostgreSQL 15) waits, up to 250 ms,
    for the transactions in flight: with a session idle in a transaction that wrote, every
    nudge cost the source a quarter of a second. Such a nudge doubles the wait before the
    next one (up to 15 s, the server's own cadence); one that completes resets it."""
    from rowcast.connectors import slot

    table, _ = watched
    settings = settings.model_copy(update={"source_restart_nudge_s": 0.01})
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    assert slot.log_running_xacts(pg_conn, settings.slot_name) == slot.NUDGE_LOGGED
    with psycopg.connect(settings.postgres_dsn.get_secret_value()) as idle:  # holds an xid
        idle.execute(f"INSERT INTO public.{table} (id) VALUES (7001)")
        assert slot.log_running_xacts(pg_conn, settings.slot_name) == slot.NUDGE_WAITED
        waits = []
        for i in range(4):
            pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES ({7100 + i})")  # WAL moves
            source._last_nudge = -1e9  # due now
            source._nudge_restart_lsn()
            waits.append(source.nudge_every_s)
        assert waits == [0.02, 0.04, 0.08, 0.16]
        idle.rollback()
    pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (7200)")
    source._last_nudge = -1e9
    source._nudge_restart_lsn()
    assert source.nudge_every_s == 0.01
    producer.close()


def test_the_position_is_saved_at_most_every_interval_and_at_stop(settings, pg_conn, watched):
    """The remembered position is a replay hint for a server crash only (a killed source finds
    the slot where it confirmed it): saving it every round cost PostgreSQL a transaction per
    round (65 a second at 300 rows/s); it is saved at most every ``source_position_every_s``,
    and always when the source stops."""
    def remembered() -> int:
        return pg_conn.execute("SELECT (last_commit_lsn - '0/0')::bigint FROM "
                               "rowcast.source_positions WHERE slot_name = %s",
                               (settings.slot_name,)).fetchone()[0]

    settings = settings.model_copy(update={"source_position_every_s": 3600.0})
    table, _ = watched
    producer = make_producer(settings)
    try:
        source = CdcSource(settings, pg_conn, producer)
        pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (1)")
        assert source.poll_once() == 1
        first = remembered()
        assert first == source.last_commit_lsn  # the first round saves at once
        pg_conn.execute(f"INSERT INTO public.{table} (id) VALUES (2)")
        assert source.poll_once() == 1
        assert source.last_commit_lsn > first and remembered() == first  # within the interval
        stopped = threading.Event()
        stopped.set()
        source.run(stopped)  # stops at once, and saves on the way out
        assert remembered() == source.last_commit_lsn
    finally:
        producer.close()
