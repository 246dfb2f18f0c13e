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

from rowcast.core.errors import RetryableError
from rowcast.core.label_events import LabelEvent
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import Settings


class BatchPublisher:
    """Blocking; the agent runs :meth:`publish` in a worker thread so the event loop stays free."""

    def __init__(self, settings: Settings, producer: KafkaProducer) -> None:
        self.settings = settings
        self.producer = producer

    def publish(self, predictions: Iterable[PredictionRecord],
                dead_letters: Iterable[tuple[bytes | None, bytes]] = (),
                labels: Iterable[LabelEvent] = ()) -> int:
        """Send predictions (keyed by source key), label events for the learners and dead
        letters; return once all are acked."""
        futures = [self.producer.send(self.settings.predictions_topic(p.deployment),
                                      key=p.key_bytes(), value=p.to_json())
                   for p in predictions]
        futures += [self.producer.send(self.settings.labels_topic(e.deployment),
                                       key=e.key_bytes(), value=e.to_json(), partition=0)
                    for e in labels]
        futures += [self.producer.send(self.settings.dlq_topic, key=key, value=value)
                    for key, value in dead_letters]
        if not futures:
            return 0
        self.producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            raise RetryableError(f"Kafka did not acknowledge {len(failed)} of {len(futures)} "
                                 f"records: {failed[0].exception!r}")
        return len(futures)
