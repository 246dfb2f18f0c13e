"""``rowcast dlq``: list the dead letters, and replay them once the cause is fixed.

Every dead letter on ``<prefix>.dlq`` carries the stage that refused it, the reason, the error,
where it came from (topic, partition, offset) and the original key and value
(:mod:`rowcast.connectors.dead_letters`). Replaying sends the original record back to the topic it came
from, so it goes through the pipeline again (after, say, the deployment was fixed with
``rowcast deploy``). Replays are safe to repeat: the sink's upsert keeps one prediction per row,
and a replayed label older than what the learner already saw is not learned twice.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from rowcast.core.errors import RetryableError
from rowcast.core.settings import Settings

REPLAYABLE_STAGES = frozenset({"score", "sink", "learner"})


@dataclass(frozen=True)
class Letter:
    offset: int
    record: dict[str, Any]

    @property
    def origin_topic(self) -> str | None:
        return (self.record.get("origin") or {}).get("topic")

    def original(self, side: str) -> bytes | None:
        payload = self.record.get(side) or {}
        if payload.get("encoding") == "utf-8":
            return str(payload["data"]).encode()
        if payload.get("encoding") == "base64":
            return base64.b64decode(payload["data"])
        return None

    @property
    def replayable(self) -> bool:
        return (self.record.get("stage") in REPLAYABLE_STAGES and self.origin_topic is not None
                and self.original("value") is not None)


def read_letters(settings: Settings, timeout_ms: int = 10_000) -> list[Letter]:
    """Every dead letter on the topic now, oldest first (unreadable records are shown raw)."""
    consumer = KafkaConsumer(**settings.kafka_client_config(), group_id=None,
                             enable_auto_commit=False, client_id="rowcast-dlq")
    try:
        partitions = consumer.partitions_for_topic(settings.dlq_topic) or set()
        tps = [TopicPartition(settings.dlq_topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        letters: list[Letter] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            batch = consumer.poll(timeout_ms=timeout_ms)
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    try:
                        record = orjson.loads(r.value)
                    except orjson.JSONDecodeError:
                        record = {"stage": "?", "reason": "unreadable dead letter",
                                  "error": repr(r.value[:200])}
                    letters.append(Letter(r.offset, record))
        return sorted(letters, key=lambda le: le.record.get("at_us", 0))
    finally:
        consumer.close()


def select(letters: Iterable[Letter], stage: str | None = None, reason: str | None = None,
           offsets: Iterable[int] = ()) -> list[Letter]:
    wanted = set(offsets)
    return [le for le in letters
            if (stage is None or le.record.get("stage") == stage)
            and (reason is None or le.record.get("reason") == reason)
            and (not wanted or le.offset in wanted)]


def replay(producer: KafkaProducer, letters: Iterable[Letter]) -> tuple[int, int]:
    """Send replayable letters' originals back to their topics; returns (replayed, skipped)."""
    futures, skipped = [], 0
    for le in letters:
        if not le.replayable:
            skipped += 1
            continue
        futures.append(producer.send(le.origin_topic, key=le.original("key"),
                                     value=le.original("value")))
    producer.flush()
    failed = [f for f in futures if f.failed()]
    if failed:
        raise RetryableError(f"Kafka refused {len(failed)} replayed records: {failed[0].exception!r}")
    return len(futures), skipped


def render(letters: Iterable[Letter]) -> str:
    lines = [f"{'OFFSET':>7}  {'STAGE':<10} {'REASON':<18} {'ORIGIN':<40} ERROR"]
    for le in letters:
        r, o = le.record, le.record.get("origin") or {}
        origin = f"{o.get('topic')}[{o.get('partition')}]@{o.get('offset')}" if o.get("topic") else "-"
        lines.append(f"{le.offset:>7}  {r.get('stage', '?'):<10} {r.get('reason', '?'):<18} "
                     f"{origin:<40} {str(r.get('error', ''))[:120]}")
    return "\n".join(lines)
