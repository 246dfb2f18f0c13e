"""The CDC source on shapes that break naive decoders: a large transaction, schema changes while
streaming, several tables at once, TRUNCATE."""

from __future__ import annotations

import pytest

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.lag import slot_lag
from tests.helpers.kafka_reading import afters, drain_rows
from tests.helpers.tables import watch
from tests.helpers.waiting import wait_until


def drain_source(settings, pg_conn, source: CdcSource) -> None:
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 1_000_000, timeout_s=60)


def test_a_large_transaction_streams_with_bounded_pending_acks(settings, pg_conn):
    settings = settings.model_copy(update={"source_ack_every": 1000, "source_max_changes": 100})
    table, topic = watch(settings, pg_conn, "(id int PRIMARY KEY, pad text)")
    pg_conn.execute(f"INSERT INTO public.{table} SELECT g, repeat('p', 50) "
                    "FROM generate_series(1, 30000) g")  # one transaction, far over max_changes
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    most_pending = 0
    real_send = source._send

    def counting_send(*args, **kwargs) -> None:
        nonlocal most_pending
        real_send(*args, **kwargs)
        most_pending = max(most_pending, len(source._pending))

    source._send = counting_send
    assert source.poll_once() == 30000  # the whole transaction in one round, then one advance
    producer.close()
    assert most_pending <= 4 * 1000  # acks awaited inside the transaction, memory bounded
    ids = [after["id"] for after in afters(drain_rows(settings, topic, 30000))]
    assert ids == list(range(1, 30001))  # commit order, nothing twice
    assert slot_lag(pg_conn, settings.slot_name).behind_bytes < 1_000_000


def test_schema_changes_while_streaming_reach_the_events(settings, pg_conn):
    table, topic = watch(settings, pg_conn, "(id int PRIMARY KEY, a int, b text)")
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1, 10, 'x')")
    drain_source(settings, pg_conn, source)  # the source has decoded the first shape
    pg_conn.execute(f"ALTER TABLE public.{table} ADD COLUMN c numeric(6,2) DEFAULT 1.5")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (2, 20, 'y', 2.25)")
    pg_conn.execute(f"ALTER TABLE public.{table} DROP COLUMN b")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (3, 30, 3.5)")
    pg_conn.execute(f"ALTER TABLE public.{table} ALTER COLUMN a TYPE text USING a::text")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (4, 'forty', 4.75)")
    drain_source(settings, pg_conn, source)
    producer.close()
    after = afters(drain_rows(settings, topic, 4))
    assert after == [
        {"id": 1, "a": 10, "b": "x"},
        {"id": 2, "a": 20, "b": "y", "c": "2.25"},
        {"id": 3, "a": 30, "c": "3.50"},
        {"id": 4, "a": "forty", "c": "4.75"},
    ]


def test_one_source_streams_several_tables_each_to_its_topic(settings, pg_conn):
    first, first_topic = watch(settings, pg_conn, "(id int PRIMARY KEY)")
    second, second_topic = watch(settings, pg_conn, "(code text PRIMARY KEY, n int)")
    with pg_conn.transaction():  # interleaved in one transaction
        for i in range(1, 6):
            pg_conn.execute(f"INSERT INTO public.{first} VALUES ({i})")
            pg_conn.execute(f"INSERT INTO public.{second} VALUES ('k{i}', {i})")
    producer = make_producer(settings)
    drain_source(settings, pg_conn, CdcSource(settings, pg_conn, producer))
    producer.close()
    assert [a["id"] for a in afters(drain_rows(settings, first_topic, 5))] == [1, 2, 3, 4, 5]
    second_events = [r.value for r in drain_rows(settings, second_topic, 5)]
    assert [e["after"] for e in second_events] == [{"code": f"k{i}", "n": i} for i in range(1, 6)]
    assert {e["source"]["table"] for e in second_events} == {second}


def test_truncate_is_skipped_and_streaming_goes_on(settings, pg_conn):
    """Documented behaviour: TRUNCATE publishes no event (Debezium's default,
    ``skipped.operations=t``); predictions of truncated rows stay until deleted."""
    table, topic = watch(settings, pg_conn, "(id int PRIMARY KEY)")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1)")
    pg_conn.execute(f"TRUNCATE public.{table}")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (2)")
    producer = make_producer(settings)
    drain_source(settings, pg_conn, CdcSource(settings, pg_conn, producer))
    producer.close()
    assert [a["id"] for a in afters(drain_rows(settings, topic, 2))] == [1, 2]


@pytest.mark.parametrize("source_format", ["rowcast", "debezium"])
def test_update_carries_before_as_replica_identity_allows(settings, pg_conn, source_format):
    settings = settings.model_copy(update={"source_format": source_format})
    table, topic = watch(settings, pg_conn, "(id int PRIMARY KEY, a int, b text)")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1, 10, 'x'), (2, 20, 'y')")
    pg_conn.execute(f"UPDATE public.{table} SET a = 11 WHERE id = 1")  # default identity: no before
    pg_conn.execute(f"ALTER TABLE public.{table} REPLICA IDENTITY FULL")
    pg_conn.execute(f"UPDATE public.{table} SET a = 21 WHERE id = 2")
    pg_conn.execute(f"UPDATE public.{table} SET id = 3 WHERE id = 1")  # key change: old key known
    producer = make_producer(settings)
    drain_source(settings, pg_conn, CdcSource(settings, pg_conn, producer))
    producer.close()
    tombstone = source_format == "debezium"
    records = drain_rows(settings, topic, 6 + tombstone, tombstones=True)
    ops = [(r.key_doc["id"], r.value and r.value["op"]) for r in records]
    # a key change is a delete of the old key (and, one envelope per row, its tombstone) and a
    # create that carries the old key, as in Debezium
    assert ops == [(1, "c"), (2, "c"), (1, "u"), (2, "u"), (1, "d"),
                   *([(1, None)] if tombstone else []), (3, "c")]
    first, second, deleted, created = [r.value for r in records if r.value is not None][2:]
    assert records[-1].old_key == {"id": 1}
    assert first["before"] is None and first["after"]["a"] == 11  # default identity: no before
    assert second["before"] == {"id": 2, "a": 20, "b": "y"}  # REPLICA IDENTITY FULL
    assert deleted["before"] == {"id": 1, "a": 11, "b": "x"} and deleted["after"] is None
    assert created["after"] == {"id": 3, "a": 11, "b": "x"}
