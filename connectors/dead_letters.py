"""Dead letters: events rowcast could not use, set aside on ``<prefix>.dlq`` with the reason.

The original bytes travel with the record (as text when they are UTF-8, else base64), together
with where they came from and which stage refused them, so they can be inspected and replayed.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import orjson
from kafka import KafkaProducer

from rowcast.core import metrics

log = logging.getLogger(__name__)


def _payload(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"encoding": "null", "data": None}
    try:
        return {"encoding": "utf-8", "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(data).decode("ascii")}


def dead_letter(*, stage: str, reason: str, error: str, topic: str | None, partition: int | None,
                offset: int | None, key: bytes | None, value: bytes | None) -> dict[str, Any]:
    """The dead-letter record: what failed, where, why, and the original payload."""
    return {
        "stage": stage,
        "reason": reason,
        "error": error,
        "origin": {"topic": topic, "partition": partition, "offset": offset},
        "key": _payload(key),
        "value": _payload(value),
        "at_us": time.time_ns() // 1000,
    }


class DeadLetterWriter:
    """Sends dead letters with a producer the caller flushes with its own batch."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.count = 0

    def send(self, **fields: Any) -> None:
        record = dead_letter(**fields)
        log.warning("dead letter from %s: %s (%s)", record["stage"], record["reason"],
                    record["error"])
        metrics.DEAD_LETTERS.labels(record["stage"], record["reason"]).inc()
        self.producer.send(self.topic, key=fields.get("key"), value=orjson.dumps(record))
        self.count += 1
