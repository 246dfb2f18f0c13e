"""Read what a topic holds, from the beginning, waiting (bounded) for an expected count.

Change topics hold either change batches (``source_format`` "rowcast", the default: many rows
per record) or one Debezium envelope per row. :func:`drain_rows` and :func:`rows_of` expand
both into one :class:`Row` per row change, whose ``value`` is the envelope the row would have
had in Debezium format, so a test checks the same facts in either format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaConsumer

from rowcast.core.change_batch import ChangeBatch, is_batch
from rowcast.core.envelope import OLD_KEY_HEADER, WATERMARK_HEADER, build_value
from rowcast.core.keys import encode_key
from tests.helpers.waiting import wait_until


def is_watermark(record) -> bool:
    """The CDC source's watermark records (see rowcast.core.envelope.WATERMARK_KEY)."""
    return any(name == WATERMARK_HEADER for name, _ in record.headers or ())


@dataclass(frozen=True)
class Row:
    """One row change read from a change topic, whatever its record's format.

    ``value`` is the Debezium envelope (``None`` for a tombstone, which only the per-row
    format writes); ``key`` the row's key as the record key a per-row envelope carries (bytes);
    ``old_key`` the key before a primary-key change (decoded), on the create that follows it;
    ``batched`` whether it came in a change batch; ``index`` its place in its record."""

    key: bytes | None
    value: dict[str, Any] | None
    partition: int
    offset: int
    old_key: dict[str, Any] | None = None
    batched: bool = False
    index: int = 0

    @property
    def key_doc(self) -> Any:
        return orjson.loads(self.key) if self.key else None


def rows_of(record) -> list[Row]:
    """The row changes one record holds (none for a watermark)."""
    if is_watermark(record):
        return []
    if is_batch(record.headers):
        events = ChangeBatch.decode(record.value).events(f"{record.topic}:{record.partition}")
        return [Row(encode_key(e.key), build_value(
            op=e.op, before=e.before, after=e.after, source=e.source, tx_order=e.order[2],
            now_us=0), record.partition, record.offset, e.old_key, True, i)
            for i, e in enumerate(events)]
    old = next((v for name, v in record.headers or () if name == OLD_KEY_HEADER), None)
    value = orjson.loads(record.value) if record.value is not None else None
    return [Row(record.key, value, record.partition, record.offset,
                orjson.loads(old) if old else None)]


def expand(records) -> list[Row]:
    """Every row change of ``records``, in their order."""
    return [row for record in records for row in rows_of(record)]


def drain(settings, topic: str, expected: int, timeout_s: float = 60.0,
          watermarks: bool = False, count=len) -> list:
    """Every record of ``topic`` once ``count(records)`` reached ``expected`` (extras are
    returned too, so a duplicate shows up in the caller's assertion rather than being hidden).

    The source's watermark records are left out (and not counted) unless ``watermarks``."""
    consumer = KafkaConsumer(topic, **settings.kafka_client_config(), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=500)
    records: list = []

    def read() -> None:
        records.extend(r for r in consumer if watermarks or not is_watermark(r))

    try:
        wait_until(lambda: read() or count(records) >= expected,
                   timeout_s=timeout_s,
                   message=lambda: f"{count(records)} of {expected} on {topic}")
        read()
    finally:
        consumer.close()
    return records


def drain_rows(settings, topic: str, expected: int, timeout_s: float = 60.0,
               tombstones: bool = False) -> list[Row]:
    """Every row change on a change topic, in either format, once ``expected`` arrived
    (tombstones left out and not counted unless ``tombstones``)."""
    def keep(rows: list[Row]) -> list[Row]:
        return rows if tombstones else [r for r in rows if r.value is not None]

    records = drain(settings, topic, expected, timeout_s, count=lambda rs: len(keep(expand(rs))))
    return keep(expand(records))


def afters(rows: list[Row]) -> list[Any]:
    """The ``after`` image of each row change."""
    return [r.value["after"] for r in rows if r.value is not None]
