"""Issue 14: the CDC source writes watermarks to every partition of a table's change topic.

A watermark ``L`` on a partition says "every change committed at or before L is on this
partition already"; the learner merges partitions in commit order with them. Checked on the
real server and broker, with a table spread over four partitions.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict

import orjson

from rowcast.connectors import heartbeat
from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import watch_table
from rowcast.core.envelope import WATERMARK_HEADER, WATERMARK_KEY
from tests.helpers.kafka_reading import drain, rows_of
from tests.helpers.waiting import wait_until

PARTITIONS = 4


def watermark_of(record) -> int | None:
    for name, value in record.headers or ():
        if name == WATERMARK_HEADER:
            assert record.key == WATERMARK_KEY and record.value is None
            return int(value.decode())
    return None


def by_partition(records) -> dict[int, list]:
    parts: dict[int, list] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        parts[r.partition].append(r)
    return parts


def commit_of(record) -> int:
    """The highest commit LSN of the rows a change record holds (batch or envelope)."""
    return max(int(orjson.loads(r.value["source"]["sequence"])[0]) for r in rows_of(record))


def weight(records) -> int:
    """Row changes plus watermark records."""
    return sum(len(rows_of(r)) or 1 for r in records)


def highest_watermarks(records) -> dict[int, int]:
    return {p: max((w for r in rs if (w := watermark_of(r)) is not None), default=0)
            for p, rs in by_partition(records).items()}


def test_every_partition_gets_watermarks_past_every_change_and_an_idle_source_is_quiet(settings, pg_conn):
    settings = settings.model_copy(update={"watermark_interval_s": 0.3})
    table = f"wm_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, n int)")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": PARTITIONS}), [topic])
    for start in (1, 20, 40):  # a few transactions, their rows spread over the partitions
        with pg_conn.transaction():
            for i in range(start, start + 12):
                pg_conn.execute(f"INSERT INTO public.{table} VALUES ({i}, {i})")
    pg_conn.execute(f"UPDATE public.{table} SET n = 0 WHERE id < 5")
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 10_000_000, timeout_s=30)
    producer.flush()  # watermarks are sent after the acks, not awaited by the source

    changes = 36 + 4
    records = drain(settings, topic, changes + PARTITIONS, watermarks=True, count=weight)
    parts = by_partition(records)
    assert sorted(parts) == list(range(PARTITIONS))
    assert sum(len(rows_of(r)) for r in records) == changes  # each change once
    for p, rs in parts.items():
        events = [r for r in rs if watermark_of(r) is None]
        assert events, f"partition {p} got no change: spread the keys wider"
        last = watermark_of(rs[-1])
        assert last is not None, f"partition {p} does not end with a watermark"
        assert last >= max(commit_of(r) for r in events)
        for i, r in enumerate(rs):  # every change precedes a watermark at or past its commit
            if watermark_of(r) is None:
                after = [w for x in rs[i + 1:] if (w := watermark_of(x)) is not None]
                assert any(w >= commit_of(r) for w in after), (p, r.offset)
        marks = [w for r in rs if (w := watermark_of(r)) is not None]
        assert marks == sorted(set(marks))  # sent only when it grew

    # no new rows, WAL moves (the heartbeat): an idle pipeline writes no watermark at all
    first = highest_watermarks(records)
    heartbeat.beat(pg_conn, settings.slot_name)
    deadline = time.monotonic() + 3 * settings.watermark_interval_s
    while time.monotonic() < deadline:
        source.poll_once()
    producer.flush()
    assert len(drain(settings, topic, 0, watermarks=True)) == len(records)

    # one new row lands on one partition: every partition, idle ones too, learns that it is
    # complete up to that commit, so a learner waiting on them can release the row
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1000, 1)")
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 10_000_000, timeout_s=30)
    producer.flush()
    now = drain(settings, topic, len(records) + 1 + PARTITIONS, watermarks=True)
    row = next(r for r in now if any(x.key_doc == {"id": 1000} for x in rows_of(r)))
    later = highest_watermarks(now)
    assert all(later[p] >= commit_of(row) > first[p] for p in range(PARTITIONS))
    producer.close()


def test_watermarks_can_be_turned_off(settings, pg_conn):
    settings = settings.model_copy(update={"source_watermarks": False})
    table = f"wm_off_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY)")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": 2}), [topic])
    pg_conn.execute(f"INSERT INTO public.{table} SELECT generate_series(1, 6)")
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 10_000_000, timeout_s=30)
    producer.close()
    records = drain(settings, topic, 6, watermarks=True, count=weight)
    assert [watermark_of(r) for r in records] == [None] * len(records)
    assert sum(len(rows_of(r)) for r in records) == 6
