"""Publish one scored batch and wait until Kafka acknowledged all of it.

Why not faust's own producer: its sends are acknowledged asynchronously, and a batch's events are
acked (:mod:`rowcast.streams.micro_batches`) as soon as the loop body returns. We observed a
prediction that ``app.producer.send`` accepted never reaching its partition while the offset
commit behind it stalled, so a restart at that point would lose it. Here the batch body does not return until
every record is acknowledged (``acks=all``, idempotent producer); a committed source offset
therefore always has its predictions, label events and dead letters durably on Kafka, whatever
faust's producer does.

What goes out (issue 15):

- **predictions**: one record per row on ``<prefix>.predictions.<deployment>``, keyed by the
  row's primary key (a tombstone when the row was deleted): the contract downstream consumers
  and compaction rely on;
- **label events**: one record per deployment per batch on partition 0 of
  ``<prefix>.labels.<deployment>`` (:func:`rowcast.core.label_events.encode_batch`, key
  ``BATCH_KEY``, header ``BATCH_HEADER``), events in the order the scorer gave them (the
  learner's commit-order merge depends on it; watermarks come last). A batch whose record
  would exceed :data:`LABEL_RECORD_BYTES` is split into several records, in order;
- **dead letters**: one record each on the dead-letter topic.

All of them go through one confluent-kafka producer
(:func:`rowcast.connectors.fast_kafka.make_fast_producer`): producing a record costs a few µs
of CPU there against 31–35 µs with kafka-python (``bench/publish.py``), and it gives the same
guarantees (idempotent, ``acks=all``, ack awaited here).
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Producer

from rowcast.connectors.fast_kafka import ConfluentSends
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.label_events import BATCH_HEADER, BATCH_KEY, BATCH_VERSION, LabelEvent, encode_batch
from rowcast.core.prediction import PredictionRecord, PredictionTombstone
from rowcast.core.settings import Settings

# below the broker's default max.message.bytes (1 MiB + 12) with room for key and headers
LABEL_RECORD_BYTES = 900 * 1024
BATCH_HEADERS = [(BATCH_HEADER, str(BATCH_VERSION).encode())]  # the format version, as the value says


def label_records(events: list[LabelEvent], limit: int = LABEL_RECORD_BYTES) -> list[bytes]:
    """The values of the label batch records for one deployment's events, in order: one
    record, or several of at most ``limit`` bytes each when one would be larger (an event
    larger than ``limit`` on its own still gets a record of its own)."""
    whole = encode_batch(events)
    if len(whole) <= limit or len(events) == 1:
        return [whole]
    records: list[bytes] = []
    chunk: list[LabelEvent] = []
    size = len(encode_batch([]))
    for event in events:
        cost = len(event.to_json()) + 1  # the comma between events
        if chunk and size + cost > limit:
            records.append(encode_batch(chunk))
            chunk, size = [], len(encode_batch([]))
        chunk.append(event)
        size += cost
    records.append(encode_batch(chunk))
    return records


class BatchPublisher:
    """Blocking; the agent runs :meth:`publish` in a worker thread so the event loop stays free.

    One batch at a time (the scorer publishes from a single thread): waiting for a batch waits
    for the producer's whole queue."""

    def __init__(self, settings: Settings, producer: Producer,
                 label_record_bytes: int = LABEL_RECORD_BYTES) -> None:
        self.settings = settings
        self.producer = producer
        self.label_record_bytes = label_record_bytes

    def publish(self, predictions: Iterable[PredictionRecord | PredictionTombstone],
                dead_letters: Iterable[DeadLetter] = (),
                labels: Iterable[LabelEvent] = ()) -> int:
        """Send predictions (keyed by source key), label batches for the learners and dead
        letters; return the number of records once all are acknowledged, raise
        :class:`~rowcast.core.errors.RetryableError` if any was not."""
        sends = ConfluentSends(self.producer)
        keyed: dict[str, list[dict[str, bytes | None]]] = {}  # deployment -> its records
        for p in predictions:  # a tombstone when the row was deleted
            records = keyed.get(p.deployment)
            if records is None:
                records = keyed[p.deployment] = []
            records.append({"key": p.key_bytes(), "value": None
                            if isinstance(p, PredictionTombstone) else p.to_json()})
        for deployment, records in keyed.items():  # one call each (see send_keyed)
            sends.send_keyed(self.settings.predictions_topic(deployment), records)
        by_deployment: dict[str, list[LabelEvent]] = {}
        for e in labels:
            by_deployment.setdefault(e.deployment, []).append(e)
        for deployment, events in by_deployment.items():
            topic = self.settings.labels_topic(deployment)
            for value in label_records(events, self.label_record_bytes):
                sends.send(topic, BATCH_KEY, value, partition=0, headers=BATCH_HEADERS)
        for d in dead_letters:
            sends.send(self.settings.dlq_topic, d.kafka_key(), d.encode())
        return sends.wait()
