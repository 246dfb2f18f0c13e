"""Publish one scored batch and wait until Kafka acknowledged all of it.

Why not faust's own producer: its sends are acknowledged asynchronously, and faust acks a
``take_events`` batch as soon as the loop body returns. We observed a prediction that
``app.producer.send`` accepted never reaching its partition while the offset commit behind it
stalled, so a restart at that point would lose it. Here the batch body does not return until
every record is acknowledged (``acks=all``, idempotent producer from
:mod:`rowcast.connectors.kafka_clients`); a committed source offset therefore always has its
predictions and dead letters durably on Kafka, whatever faust's producer does.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaProducer

from rowcast.connectors.kafka_clients import AckedSends
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.label_events import LabelEvent
from rowcast.core.prediction import PredictionRecord, PredictionTombstone
from rowcast.core.settings import Settings


class BatchPublisher:
    """Blocking; the agent runs :meth:`publish` in a worker thread so the event loop stays free."""

    def __init__(self, settings: Settings, producer: KafkaProducer) -> None:
        self.settings = settings
        self.producer = producer

    def publish(self, predictions: Iterable[PredictionRecord | PredictionTombstone],
                dead_letters: Iterable[DeadLetter] = (),
                labels: Iterable[LabelEvent] = ()) -> int:
        """Send predictions (keyed by source key), label events for the learners and dead
        letters; return once all are acked."""
        sends = AckedSends(self.producer)
        for p in predictions:  # a tombstone when the row was deleted
            sends.send(self.settings.predictions_topic(p.deployment), p.key_bytes(),
                       None if isinstance(p, PredictionTombstone) else p.to_json())
        for e in labels:
            sends.send(self.settings.labels_topic(e.deployment), e.key_bytes(), e.to_json(),
                       partition=0)
        for d in dead_letters:
            sends.send(self.settings.dlq_topic, d.kafka_key(), d.encode())
        return sends.wait()
