"""Setting records aside on ``<prefix>.dlq``: the one place a dead letter is logged, counted
and sent (the record itself is :class:`rowcast.core.dead_letter.DeadLetter`).
"""

from __future__ import annotations

import logging

from kafka import KafkaProducer

from rowcast.core import metrics
from rowcast.core.dead_letter import DeadLetter

log = logging.getLogger(__name__)


def announce(letter: DeadLetter) -> DeadLetter:
    """Log and count a letter; for stages that send it inside their own acked batch."""
    log.warning("dead letter from %s: %s (%s)", letter.stage, letter.reason, letter.error)
    metrics.DEAD_LETTERS.labels(letter.stage, letter.reason).inc()
    return letter


class DeadLetterWriter:
    """Sends dead letters with a producer the caller flushes with its own batch."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.count = 0

    def send(self, letter: DeadLetter) -> None:
        announce(letter)
        self.producer.send(self.topic, key=letter.kafka_key(), value=letter.encode())
        self.count += 1
