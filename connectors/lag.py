"""Lag, computed in one place: the replication slot's and each consumer group's.

Consumer lag is Kafka's usual definition (as in ``kafka-consumer-groups --describe``): the log
end offset minus the group's committed offset, per partition; a partition the group never
committed counts from the log start. The CLI, the demo and later the dashboard all call these.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec

from connectors import heartbeat


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
    heartbeats of :mod:`connectors.heartbeat`), and how much WAL it pins."""
    row = conn.execute(
        "SELECT active, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, "
        "(pg_current_wal_lsn() - restart_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return None
    return SlotLag(slot, bool(row[0]), int(row[1] or 0), int(row[2] or 0),
                   heartbeat.behind_seconds(conn, slot))


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
    committed = admin.list_group_offsets({group_id: None}).get(group_id, {})
    out = []
    for tp in partitions:
        end = ends[tp].offset
        done = committed.get(tp)
        done_offset = done.offset if done is not None and done.offset >= 0 else None
        lag = end - (done_offset if done_offset is not None else starts[tp].offset)
        out.append(PartitionLag(tp.topic, tp.partition, end, done_offset, max(lag, 0)))
    return out

