"""Lag, computed in one place: the replication slot's and each consumer group's.

Consumer lag is Kafka's usual definition (as in ``kafka-consumer-groups --describe``): the log
end offset minus the group's committed offset, per partition; a partition the group never
committed counts from the log start. The CLI, the demo and later the dashboard all call these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError

from rowcast.connectors import heartbeat


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    log_end: int
    committed: int | None
    lag: int


@dataclass(frozen=True, slots=True)
class SlotLag:
    slot: str
    active: bool
    behind_bytes: int
    retained_bytes: int
    behind_seconds: float = 0.0


def slot_lag(conn: psycopg.Connection, slot: str) -> SlotLag | None:
    """How far the slot's confirmed position trails the server's WAL (bytes, and seconds by the
    heartbeats of :mod:`rowcast.connectors.heartbeat`), and how much WAL it pins."""
    row = conn.execute(
        "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, "
        "(pg_current_wal_lsn() - restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return None
    return SlotLag(slot, bool(row[0]), int(row[1] or 0), int(row[2] or 0),
                   heartbeat.behind_seconds(conn, slot))


COORDINATOR_WAIT_S = 15.0  # a broker creating __consumer_offsets answers within seconds


def _group_offsets(admin: KafkaAdminClient, group_id: str,
                   wait_s: float = COORDINATOR_WAIT_S) -> dict[TopicPartition, Any]:
    """The group's committed offsets. A broker that just started has no group coordinator
    until it made ``__consumer_offsets`` (CoordinatorNotAvailable, CoordinatorLoadInProgress:
    retriable errors): asked again until ``wait_s``, then the error is the caller's."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return admin.list_group_offsets({group_id: None}).get(group_id, {})
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)  # a retry's backoff, as Kafka's own clients do


def consumer_lag(admin: KafkaAdminClient, group_id: str, topics: list[str]) -> list[PartitionLag]:
    """Per-partition lag of ``group_id`` over ``topics`` (missing topics are skipped)."""
    existing = set(admin.list_topics())
    wanted = [t for t in topics if t in existing]
    if not wanted:
        return []
    partitions = [TopicPartition(t["name"], p["partition_index"])
                  for t in admin.describe_topics(wanted) for p in t["partitions"]]
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    starts = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in partitions})
    committed = _group_offsets(admin, group_id)
    out = []
    for tp in partitions:
        end = ends[tp].offset
        done = committed.get(tp)
        done_offset = done.offset if done is not None and done.offset >= 0 else None
        lag = end - (done_offset if done_offset is not None else starts[tp].offset)
        out.append(PartitionLag(tp.topic, tp.partition, end, done_offset, max(lag, 0)))
    return out



def oldest_unconsumed_age_s(consumer: KafkaConsumer, lagging: list[PartitionLag],
                            now_ms: int, timeout_ms: int = 500) -> dict[tuple[str, int], float]:
    """Age in seconds of the first record each lagging partition's group has not committed:
    how long the oldest waiting event has waited (its record timestamp, the producer's time).

    ``consumer`` is a group-less consumer the caller owns (reused across samples)."""
    wanted = {TopicPartition(p.topic, p.partition): p for p in lagging if p.lag > 0}
    if not wanted:
        return {}
    if set(consumer.assignment()) != set(wanted):
        consumer.assign(list(wanted))
    for tp, p in wanted.items():
        if p.committed is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, p.committed)
    ages: dict[tuple[str, int], float] = {}
    deadline = time.monotonic() + timeout_ms / 1000
    while len(ages) < len(wanted) and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=200, max_records=len(wanted) * 10).items():
            if records and (tp.topic, tp.partition) not in ages:
                ages[(tp.topic, tp.partition)] = max(now_ms - records[0].timestamp, 0) / 1000
            consumer.pause(tp)
    consumer.resume(*consumer.paused())
    return ages
