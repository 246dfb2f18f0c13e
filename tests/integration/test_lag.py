"""Consumer and slot lag computed against the real broker and server."""

from __future__ import annotations

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from connectors.kafka_clients import ensure_topics, make_admin, make_consumer, make_producer
from connectors.lag import consumer_lag, slot_lag
from rowcast.schema import init_database


def test_consumer_lag_is_log_end_minus_committed_per_partition(settings):
    topic = f"{settings.topic_prefix}.lagged"
    ensure_topics(settings.model_copy(update={"topic_partitions": 2}), [topic])
    producer = make_producer(settings)
    for _ in range(5):
        producer.send(topic, value=b"x", partition=0)
    for _ in range(3):
        producer.send(topic, value=b"y", partition=1)
    producer.flush()
    producer.close()
    group = f"{settings.topic_prefix}-group"
    consumer = make_consumer(settings, group)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1)})
    consumer.close()

    admin = make_admin(settings)
    try:
        lags = {p.partition: p for p in consumer_lag(admin, group, [topic, "no.such.topic"])}
    finally:
        admin.close()
    assert (lags[0].log_end, lags[0].committed, lags[0].lag) == (5, 2, 3)
    assert (lags[1].log_end, lags[1].committed, lags[1].lag) == (3, None, 3)  # never committed


def test_slot_lag_grows_with_unconsumed_wal(settings, pg_conn):
    init_database(pg_conn, settings)
    before = slot_lag(pg_conn, settings.slot_name)
    pg_conn.execute("CREATE TEMP TABLE filler AS SELECT g FROM generate_series(1, 10000) g")
    after = slot_lag(pg_conn, settings.slot_name)
    assert after.behind_bytes > before.behind_bytes and after.retained_bytes >= after.behind_bytes
    assert slot_lag(pg_conn, "no_such_slot") is None
