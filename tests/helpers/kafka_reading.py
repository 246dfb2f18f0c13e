"""Read what a topic holds, from the beginning, waiting (bounded) for an expected count."""

from __future__ import annotations

from kafka import KafkaConsumer

from rowcast.core.envelope import WATERMARK_HEADER
from tests.helpers.waiting import wait_until


def is_watermark(record) -> bool:
    """The CDC source's watermark records (see rowcast.core.envelope.WATERMARK_KEY)."""
    return any(name == WATERMARK_HEADER for name, _ in record.headers or ())


def drain(settings, topic: str, expected: int, timeout_s: float = 60.0,
          watermarks: bool = False) -> list:
    """Every record of ``topic`` once at least ``expected`` arrived (extras are returned too,
    so a duplicate shows up in the caller's assertion rather than being hidden).

    The source's watermark records are left out (and not counted) unless ``watermarks``."""
    consumer = KafkaConsumer(topic, **settings.kafka_client_config(), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=500)
    records: list = []

    def read() -> None:
        records.extend(r for r in consumer if watermarks or not is_watermark(r))

    try:
        wait_until(lambda: read() or len(records) >= expected,
                   timeout_s=timeout_s,
                   message=lambda: f"{len(records)} of {expected} records on {topic}")
        read()
    finally:
        consumer.close()
    return records
