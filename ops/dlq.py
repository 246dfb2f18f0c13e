"""``rowcast dlq``: list the dead letters, and replay them once the cause is fixed.

Every dead letter on ``<prefix>.dlq`` carries the stage that refused it, the reason, the error,
where it came from (topic, partition, offset) and the original key and value
(:class:`rowcast.core.dead_letter.DeadLetter`). Replaying sends the original record back to the topic it came
from, so it goes through the pipeline again (after, say, the deployment was fixed with
``rowcast deploy``). Replays are safe to repeat: the sink's upsert keeps one prediction per row,
and a replayed label older than what the learner already saw is not learned twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from rowcast.connectors.kafka_clients import AckedSends
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.errors import DecodeError
from rowcast.core.settings import Settings

REPLAYABLE_STAGES = frozenset({"score", "sink", "learner"})


@dataclass(frozen=True)
class Letter:
    """A dead letter as read back: its offset on the topic and the record."""

    offset: int
    letter: DeadLetter

    @property
    def replayable(self) -> bool:
        return (self.letter.stage in REPLAYABLE_STAGES and self.letter.topic is not None
                and self.letter.value is not None)


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
                        letter = DeadLetter.decode(r.value)
                    except DecodeError:
                        letter = DeadLetter("?", "unreadable dead letter", repr(r.value[:200]),
                                            at_us=0)
                    letters.append(Letter(r.offset, letter))
        return sorted(letters, key=lambda le: le.letter.at_us)
    finally:
        consumer.close()


def select(letters: Iterable[Letter], stage: str | None = None, reason: str | None = None,
           offsets: Iterable[int] = ()) -> list[Letter]:
    wanted = set(offsets)
    return [le for le in letters
            if (stage is None or le.letter.stage == stage)
            and (reason is None or le.letter.reason == reason)
            and (not wanted or le.offset in wanted)]


def replay(producer: KafkaProducer, letters: Iterable[Letter]) -> tuple[int, int]:
    """Send replayable letters' originals back to their topics; returns (replayed, skipped)."""
    sends, skipped = AckedSends(producer, "replayed records"), 0
    for le in letters:
        if not le.replayable:
            skipped += 1
            continue
        sends.send(le.letter.topic, le.letter.key, le.letter.value)
    return sends.wait(), skipped


def render(letters: Iterable[Letter]) -> str:
    lines = [f"{'OFFSET':>7}  {'STAGE':<10} {'REASON':<18} {'ORIGIN':<40} ERROR"]
    for le in letters:
        d = le.letter
        origin = f"{d.topic}[{d.partition}]@{d.offset}" if d.topic else "-"
        lines.append(f"{le.offset:>7}  {d.stage:<10} {d.reason:<18} {origin:<40} {d.error[:120]}")
    return "\n".join(lines)
