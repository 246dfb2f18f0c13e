"""Publishing model records (:class:`rowcast.core.model_record.ModelRecord`) to the compacted
``<prefix>.models`` topic: the learner's new versions and the operator's pins go out one way."""

from __future__ import annotations

from kafka import KafkaProducer

from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.core.model_record import ModelRecord, pin_key
from rowcast.core.settings import Settings


def ensure_models_topic(settings: Settings) -> None:
    ensure_topics(settings, [settings.models_topic], compacted=True, partitions=1)


def send(producer: KafkaProducer, settings: Settings, record: ModelRecord, key: bytes):  # noqa: ANN201
    """Queue a record signed with ``key`` (one partition: every scorer reads one order);
    returns kafka-python's future."""
    return producer.send(settings.models_topic, key=record.kafka_key(), value=record.encode(key),
                         partition=0)


def publish_pin(settings: Settings, deployment: str, record: ModelRecord | None,
                key: bytes) -> None:
    """Pin ``deployment`` to ``record`` (a pin record), or unpin it (``None``: a tombstone),
    and wait for Kafka's ack so the caller can commit its own transaction after."""
    ensure_models_topic(settings)
    producer = make_producer(settings)
    try:
        if record is None:
            producer.send(settings.models_topic, key=pin_key(deployment), value=None,
                          partition=0).get(timeout=30)
        else:
            send(producer, settings, record, key).get(timeout=30)
    finally:
        producer.close()


def forget(settings: Settings, deployment: str) -> None:
    """Tombstone a deployment's records (``rowcast undeploy``): compaction then drops its
    snapshots, and workers free what they kept of it."""
    ensure_models_topic(settings)
    producer = make_producer(settings)
    try:
        for key in (deployment.encode(), pin_key(deployment)):
            producer.send(settings.models_topic, key=key, value=None, partition=0)
        producer.flush(timeout=30)
    finally:
        producer.close()
