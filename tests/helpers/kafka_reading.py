"""Read what a topic holds, from the beginning, waiting (bounded) for an expected count."""

from __future__ import annotations

from kafka import KafkaConsumer

from tests.helpers.waiting import wait_until


def drain(settings, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` once at least ``expected`` arrived (extras are returned too,
    so a duplicate shows up in the caller's assertion rather than being hidden)."""
    consumer = KafkaConsumer(topic, **settings.kafka_client_config(), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=500)
    records: list = []
    try:
        wait_until(lambda: records.extend(consumer) or len(records) >= expected,
                   timeout_s=timeout_s,
                   message=lambda: f"{len(records)} of {expected} records on {topic}")
        records.extend(consumer)
    finally:
        consumer.close()
    return records
