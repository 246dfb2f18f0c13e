"""The worker's publisher on the real broker: a scored batch is on Kafka when publish returns.

Issue 15, lever 3: predictions stay one record per row keyed by primary key, produced with
confluent-kafka; label events go as one record per deployment per batch, in order; any record
Kafka does not acknowledge makes ``publish`` raise (so faust never commits the batch).
"""

from __future__ import annotations

import uuid

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from pydantic import SecretStr

from rowcast.connectors.fast_kafka import make_fast_producer
from rowcast.connectors.kafka_clients import ensure_deployment_topics
from rowcast.connectors.partitioning import partition_of
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.errors import RetryableError
from rowcast.core.label_events import BATCH_HEADER, BATCH_KEY, LabelEvent, decode_batch
from rowcast.core.prediction import PredictionRecord, PredictionTombstone
from rowcast.streams.publishing import BatchPublisher
from tests.helpers.kafka_reading import drain
from tests.helpers.services import SASL_PASSWORD


def prediction(deployment: str, i: int, payload: str = "") -> PredictionRecord:
    return PredictionRecord(deployment, "linear_regression", 1, "public", "t",
                            {"id": i, **({"pad": payload} if payload else {})}, 2.0 * i, 2.0 * i,
                            100 + i, 1_700_000_000_000_000 + i, 1_700_000_000_000_500 + i)


def label(deployment: str, i: int, kind: str = "labelled") -> LabelEvent:
    if kind == "watermark":
        return LabelEvent("watermark", deployment, "1.1", {}, "t:0", (1000 + i, 0, 0), i)
    return LabelEvent(kind, deployment, "1.1", {"id": i}, "t:0", (100 + i, 1, i), i,  # type: ignore[arg-type]
                      {"x": float(i), "note": "n" * 50}, 2.0 * i)


def partition_count(settings, topic: str) -> int:
    consumer = KafkaConsumer(**settings.kafka_client_config(), group_id=None)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def end_offsets(settings, topic: str) -> int:
    """How many records ``topic`` holds right now (every partition), without waiting."""
    consumer = KafkaConsumer(**settings.kafka_client_config(), group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def test_predictions_are_all_on_the_topic_when_publish_returns(settings):
    name = f"p_{uuid.uuid4().hex[:6]}"
    ensure_deployment_topics(settings, [name])
    publisher = BatchPublisher(settings, make_fast_producer(settings))
    batch = [prediction(name, i) for i in range(500)] + [PredictionTombstone(name, {"id": 3})]
    publisher.publish(batch)
    topic = settings.predictions_topic(name)
    assert end_offsets(settings, topic) == 501  # all acknowledged before publish returned
    records = drain(settings, topic, 501, timeout_s=30)
    assert len(records) == 501
    by_key = {}
    for r in records:
        by_key.setdefault(r.key, []).append(r.value)
    assert sorted(by_key) == sorted({p.key_bytes() for p in batch})
    assert by_key[orjson.dumps({"id": 3})] == [batch[3].to_json(), None]  # order per key kept
    assert PredictionRecord.from_json(by_key[orjson.dumps({"id": 7})][0]) == batch[7]
    # each on the partition Kafka's default partitioner gives its key (as the source places
    # change rows): consumers and compaction find a row's predictions on one partition
    partitions = partition_count(settings, topic)
    assert partitions > 1
    assert all(r.partition == partition_of(r.key, partitions) for r in records)


def test_a_batch_larger_than_the_producers_queue_is_published_whole_and_in_order(settings):
    """More records than librdkafka's local queue holds: those it refused are queued again,
    in order, as it drains."""
    name = f"pq_{uuid.uuid4().hex[:6]}"
    ensure_deployment_topics(settings, [name])
    publisher = BatchPublisher(settings, make_fast_producer(
        settings, **{"queue.buffering.max.messages": 50}))
    batch = [prediction(name, i) for i in range(400)] + [PredictionTombstone(name, {"id": 3})]
    batch += [prediction(name, 3)]  # the row came back: its new prediction is the last word
    assert publisher.publish(batch) == 402
    topic = settings.predictions_topic(name)
    records = drain(settings, topic, 402, timeout_s=30)
    assert len(records) == 402 and end_offsets(settings, topic) == 402
    three = [r.value for r in records if r.key == orjson.dumps({"id": 3})]
    assert three == [batch[3].to_json(), None, batch[3].to_json()]
    partitions = partition_count(settings, topic)
    for p in range(partitions):  # each partition in the order sent
        sent = [b.key_bytes() for b in batch if partition_of(b.key_bytes(), partitions) == p]
        assert [r.key for r in records if r.partition == p] == sent


def test_label_events_go_as_one_record_per_deployment_in_order(settings):
    a, b = f"la_{uuid.uuid4().hex[:6]}", f"lb_{uuid.uuid4().hex[:6]}"
    ensure_deployment_topics(settings, [a, b])
    publisher = BatchPublisher(settings, make_fast_producer(settings))
    events = []
    for i in range(300):
        events.append(label(a if i % 3 else b, i, "labelled" if i % 2 else "scored"))
    events += [label(a, 1000, "watermark"), label(b, 1000, "watermark")]
    letter = DeadLetter("worker", "bad_envelope", "boom", "t", 0, 5, b"k", b"v")
    publisher.publish([prediction(a, 1)], [letter], events)
    for name in (a, b):
        [record] = drain(settings, settings.labels_topic(name), 1, timeout_s=30)
        assert record.partition == 0 and record.key == BATCH_KEY
        assert (BATCH_HEADER, b"2") in record.headers
        assert decode_batch(record.value) == [e for e in events if e.deployment == name]
    [dead] = drain(settings, settings.dlq_topic, 1, timeout_s=30)
    assert DeadLetter.decode(dead.value) == letter


def test_a_large_label_batch_is_split_into_records_in_order(settings):
    name = f"ls_{uuid.uuid4().hex[:6]}"
    ensure_deployment_topics(settings, [name])
    publisher = BatchPublisher(settings, make_fast_producer(settings), label_record_bytes=20_000)
    events = [label(name, i) for i in range(1000)] + [label(name, 5000, "watermark")]
    publisher.publish([], [], events)
    records = drain(settings, settings.labels_topic(name), 2, timeout_s=30)
    assert len(records) > 5 and all(len(r.value) <= 20_000 for r in records)
    assert [e for r in records for e in decode_batch(r.value)] == events


def test_publish_raises_when_a_topic_does_not_exist(settings):
    """Topics are the admin's to create: a record for a topic nobody created is not
    acknowledged (the producer never auto-creates it), and publish says so."""
    name = f"gone_{uuid.uuid4().hex[:6]}"
    publisher = BatchPublisher(settings, make_fast_producer(
        settings, **{"topic.metadata.propagation.max.ms": 1000}))
    with pytest.raises(RetryableError, match="did not acknowledge 3 of 3"):
        publisher.publish([prediction(name, i) for i in range(3)])


def test_publish_raises_when_the_broker_refuses_a_record(settings):
    """A record over the topic's max.message.bytes (the broker's 1 MiB default) fails its
    delivery; publish raises although every other record of the batch was taken."""
    name = f"big_{uuid.uuid4().hex[:6]}"
    ensure_deployment_topics(settings, [name])
    publisher = BatchPublisher(settings, make_fast_producer(settings))
    batch = [prediction(name, i) for i in range(10)] + [prediction(name, 10, "x" * 2_000_000)]
    with pytest.raises(RetryableError, match="did not acknowledge 1 of 11"):
        publisher.publish(batch)
    # the producer keeps working for the next batch
    assert publisher.publish([prediction(name, 11)]) == 1


@pytest.mark.parametrize("listener", ["sasl", "mtls"])
def test_security_settings_reach_the_producer(settings, kafka_server, listener):
    """The SASL login and the TLS CA / client certificate settings reach librdkafka."""
    if listener == "sasl":
        secured = settings.model_copy(update={
            "kafka_bootstrap": f"127.0.0.1:{kafka_server.sasl_port}",
            "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "rowcast", "kafka_sasl_password": SecretStr(SASL_PASSWORD)})
    else:
        secured = settings.model_copy(update={
            "kafka_bootstrap": f"127.0.0.1:{kafka_server.mtls_port}",
            "kafka_security_protocol": "SSL", "kafka_ssl_cafile": kafka_server.ssl_ca,
            "kafka_ssl_certfile": kafka_server.client_cert,
            "kafka_ssl_keyfile": kafka_server.client_key})
    name = f"sec_{uuid.uuid4().hex[:6]}"
    ensure_deployment_topics(settings, [name])
    publisher = BatchPublisher(secured, make_fast_producer(secured))
    assert publisher.publish([prediction(name, i) for i in range(5)]) == 5
    assert end_offsets(settings, settings.predictions_topic(name)) == 5
