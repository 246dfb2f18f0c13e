"""Change batches (issue 15, ``source_format`` "rowcast"): many rows per record, and still the
per-row facts: a row's partition is its key's, commit order per partition, bounded records,
a bad row alone in the dead letters, watermarks after the rows they cover."""

from __future__ import annotations

import uuid
from collections import defaultdict

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.partitioning import partition_of
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import watch_table
from rowcast.core.change_batch import is_batch
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.envelope import WATERMARK_HEADER
from tests.helpers.kafka_reading import afters, drain, drain_rows, rows_of
from tests.helpers.waiting import wait_until

PARTITIONS = 4


def _table(settings, pg_conn, columns: str, partitions: int) -> tuple[str, str]:
    table = f"batch_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} {columns}")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": partitions}), [topic])
    return table, topic


def _run(settings, pg_conn) -> CdcSource:
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 10_000_000, timeout_s=60)
    producer.flush()
    producer.close()
    return source


def _watermark(record) -> int | None:
    return next((int(v) for name, v in record.headers or () if name == WATERMARK_HEADER), None)


def test_batches_hold_rows_of_their_keys_partition_in_commit_order_bounded(settings, pg_conn):
    settings = settings.model_copy(update={"source_batch_rows": 50, "source_batch_bytes": 4096,
                                           "watermark_interval_s": 0.0})
    table, topic = _table(settings, pg_conn, "(id int PRIMARY KEY, pad text)", PARTITIONS)
    for start in range(1, 1201, 400):  # three transactions
        pg_conn.execute(f"INSERT INTO public.{table} SELECT g, repeat('p', g % 97) "
                        f"FROM generate_series({start}, {start + 399}) g")
    pg_conn.execute(f"UPDATE public.{table} SET pad = 'u' WHERE id % 10 = 0")
    pg_conn.execute(f"UPDATE public.{table} SET id = 5000 WHERE id = 7")  # a key change
    pg_conn.execute(f"DELETE FROM public.{table} WHERE id = 8")
    changes = 1200 + 120 + 2 + 1
    _run(settings, pg_conn)

    records = drain(settings, topic, changes, watermarks=True,
                    count=lambda rs: sum(len(rows_of(r)) for r in rs))
    batches = [r for r in records if _watermark(r) is None]
    assert all(is_batch(r.headers) for r in batches)
    assert len(batches) < changes / 10  # many rows per record
    by_partition: dict[int, list] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[r.partition].append(r)
    assert sorted(by_partition) == list(range(PARTITIONS))
    for partition, part in by_partition.items():
        rows = [row for r in part for row in rows_of(r)]
        # every row sits on the partition its key (as a per-row record's key) hashes to
        assert all(partition_of(row.key, PARTITIONS) == partition for row in rows)
        # commit order, as (commit LSN, change LSN, order in transaction)
        positions = [(int(row.value["source"]["sequence"].split('"')[1]), row.value["source"][
            "lsn"], row.value["transaction"]["total_order"]) for row in rows]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        for r in part:  # bounded: rows and bytes (the cap, plus at most one row's worth)
            assert len(rows_of(r)) <= 50 and len(r.value or b"") <= 4096 + 1024
        # a watermark follows the rows it covers on this partition, and ends it
        last = _watermark(part[-1])
        assert last is not None and last >= max(p[0] for p in positions)
        for i, r in enumerate(part):
            if _watermark(r) is not None:
                assert all(_watermark(x) is not None or max(
                    int(row.value["source"]["sequence"].split('"')[1]) for row in rows_of(x))
                    > _watermark(r) for x in part[i + 1:])

    rows = [row for r in batches for row in rows_of(r)]
    assert sum(row.value["op"] == "c" for row in rows) == 1201
    created = next(row for row in rows if row.key_doc == {"id": 5000})
    assert created.old_key == {"id": 7} and created.value["after"]["pad"] == "p" * 7
    assert any(row.value["op"] == "d" and row.key_doc == {"id": 7} for row in rows)
    assert any(row.value["op"] == "d" and row.key_doc == {"id": 8} for row in rows)


def test_a_bad_row_inside_a_big_transaction_goes_alone_to_the_dead_letters(settings, pg_conn):
    table, topic = _table(settings, pg_conn, "(id int PRIMARY KEY, ts timestamp)", 2)
    with pg_conn.transaction():
        pg_conn.execute(f"INSERT INTO public.{table} SELECT g, '2024-01-01'::timestamp "
                        "+ g * interval '1 second' FROM generate_series(1, 3000) g")
        pg_conn.execute(f"UPDATE public.{table} SET ts = '294276-12-31 23:59:59' WHERE id = 1500")
    _run(settings, pg_conn)

    rows = drain_rows(settings, topic, 3000)
    assert all(row.batched for row in rows)
    ids = [after["id"] for after in afters(rows)]
    assert sorted(ids) == list(range(1, 3001))  # the insert of 1500 was fine; its update not
    assert len(ids) == 3000
    letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, 1)]
    mine = [le for le in letters if le.context.get("table") == table]
    assert [(le.context["key"], le.context["column"], le.context["op"]) for le in mine] == \
        [({"id": 1500}, "ts", "u")]


def test_per_row_envelopes_land_on_the_partition_a_batch_gives_their_key(settings, pg_conn):
    """``source_format`` debezium leaves partitioning to the producer: it must hash keys as
    Kafka's Java client does (murmur2), as change batches, backfills and replays do, or a
    topic switching format (or a replayed row) would move keys between partitions and lose
    their order. A guard for a change of client: librdkafka's default hashes with CRC32
    (its ``murmur2_random`` is the Java one)."""
    settings = settings.model_copy(update={"source_format": "debezium"})
    table, topic = _table(settings, pg_conn, "(id int PRIMARY KEY)", PARTITIONS)
    pg_conn.execute(f"INSERT INTO public.{table} SELECT g FROM generate_series(1, 200) g")
    _run(settings, pg_conn)

    records = drain(settings, topic, 200)
    assert len(records) == 200
    assert len({r.partition for r in records}) == PARTITIONS
    assert all(r.partition == partition_of(r.key, PARTITIONS) for r in records)


def test_rows_seen_before_their_topic_exists_get_a_topic_of_rowcasts_layout(settings, pg_conn):
    """A deployment made with the SQL function has no change topic until a worker restarts
    for it, and the source may see its rows first: the source makes the topic with rowcast's
    partitions and replication (``ensure_topics``), and asking Kafka about it never makes it
    with the broker's defaults (one partition here; auto-creation is on, as Debezium needs)."""
    settings = settings.model_copy(update={"topic_partitions": PARTITIONS,
                                           "watermark_interval_s": 0.0})
    table = f"batch_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY)")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    pg_conn.execute(f"INSERT INTO public.{table} SELECT g FROM generate_series(1, 40) g")
    source = _run(settings, pg_conn)
    assert source.watermarks_sent >= PARTITIONS  # one to each partition: the topic's four

    rows = drain_rows(settings, topic, 40)
    assert sorted(a["id"] for a in afters(rows)) == list(range(1, 41))
    assert {row.partition for row in rows} == set(range(PARTITIONS))
