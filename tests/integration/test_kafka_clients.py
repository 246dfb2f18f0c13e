"""rowcast's kafka-python clients on the real broker (which auto-creates topics, as Debezium's
need): asking about a topic never creates it. Topics come from ``ensure_topics`` only, with
rowcast's partitions and replication; one made by a metadata request gets the broker's
defaults (one partition here), and a deployment's rows then all go to that partition."""

from __future__ import annotations

import uuid

import pytest
from kafka.errors import KafkaTimeoutError

from rowcast.connectors.kafka_clients import make_admin, make_consumer, make_producer


def test_asking_about_a_missing_topic_does_not_create_it(settings):
    producer_topic, consumer_topic = (f"{settings.topic_prefix}.missing_{uuid.uuid4().hex[:6]}"
                                      for _ in range(2))
    producer = make_producer(settings, max_block_ms=1500)
    consumer = make_consumer(settings, f"g_{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.partitions_for(producer_topic)  # what the source asks before a batch
        consumer.subscribe([consumer_topic])  # as the learner subscribes to labels topics
        for _ in range(5):
            consumer.poll(timeout_ms=200)
    finally:
        producer.close(timeout=5)
        consumer.close()
    admin = make_admin(settings)
    try:
        assert not {producer_topic, consumer_topic} & set(admin.list_topics())
    finally:
        admin.close()
