"""Consumer and slot lag computed against the real broker and server."""

from __future__ import annotations

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from rowcast.connectors.kafka_clients import ensure_topics, make_admin, make_consumer, make_producer
from rowcast.connectors.lag import consumer_lag, slot_lag
from rowcast.connectors.schema import init_database


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


def test_rowcast_lag_prints_each_partition_of_scorer_and_sink(settings, pg_conn):
    import os
    import subprocess
    import sys
    import uuid

    from rowcast.connectors.registry import create_deployment

    init_database(pg_conn, settings)
    table = f"lagcli_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    name = f"lag_{uuid.uuid4().hex[:6]}"
    create_deployment(pg_conn, name, f"public.{table}", "y", None, "linear_regression")
    one_partition = settings.model_copy(update={"topic_partitions": 1})
    source_topic, predictions = settings.source_topic("public", table), settings.predictions_topic(name)
    ensure_topics(one_partition, [source_topic, predictions])
    producer = make_producer(settings)
    for _ in range(4):
        producer.send(predictions, value=b"p")
    producer.flush()
    producer.close()
    out = subprocess.run([sys.executable, "-m", "rowcast", "lag"], capture_output=True, text=True,
                         env={**os.environ, **settings.to_env()}, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.stdout.splitlines()[2:]}
    assert rows[(f"{settings.topic_prefix}-sink", predictions)] == ["0", "-", "4", "4"]
    assert rows[(f"{settings.topic_prefix}-scorer", source_topic)] == ["0", "-", "0", "0"]
    assert out.stdout.startswith(f"slot {settings.slot_name}: behind ")
    assert settings.postgres_dsn.get_secret_value() not in out.stdout + out.stderr


def test_oldest_unconsumed_event_age_reads_the_first_uncommitted_record(settings):
    import time

    from kafka import KafkaConsumer

    from rowcast.connectors.lag import oldest_unconsumed_age_s

    topic = f"{settings.topic_prefix}.aged"
    ensure_topics(settings.model_copy(update={"topic_partitions": 1}), [topic])
    now_ms = int(time.time() * 1000)
    producer = make_producer(settings)
    for age_s in (50, 40, 30):  # records stamped 50, 40 and 30 seconds ago
        producer.send(topic, value=b"x", partition=0, timestamp_ms=now_ms - age_s * 1000)
    producer.flush()
    producer.close()
    group = f"{settings.topic_prefix}-aged"
    consumer = make_consumer(settings, group)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(1, "", -1)})  # first consumed
    consumer.close()
    admin = make_admin(settings)
    reader = KafkaConsumer(**settings.kafka_client_config(), group_id=None)
    try:
        lags = consumer_lag(admin, group, [topic])
        ages = oldest_unconsumed_age_s(reader, lags, now_ms)
        assert ages == {(topic, 0): 40.0}  # the record at the committed offset
        caught_up = [p.__class__(p.topic, p.partition, p.log_end, p.log_end, 0) for p in lags]
        assert oldest_unconsumed_age_s(reader, caught_up, now_ms) == {}
    finally:
        reader.close()
        admin.close()


def test_consumer_lag_waits_for_the_group_coordinator_of_a_broker_that_just_started(tmp_path):
    """On a fresh broker the first group lookup finds no coordinator yet (Kafka is still
    creating __consumer_offsets: CoordinatorNotAvailable, a retriable error). `rowcast lag`
    right after `rowcast dev up` said Kafka "did not let rowcast in"; it waits instead."""
    from rowcast.core.settings import Settings
    from rowcast.ops.devstack.kafka import KafkaServer
    from rowcast.ops.devstack.process import free_port

    server = KafkaServer(tmp_path / "kafka", free_port(), free_port(),
                         cache_dir=Settings(_env_file=None).cache_dir)
    server.start()
    try:
        fresh = Settings(kafka_bootstrap=server.bootstrap, topic_prefix="fresh", _env_file=None)
        ensure_topics(fresh, ["fresh.t"], partitions=2)
        admin = make_admin(fresh)
        try:
            lags = consumer_lag(admin, "fresh-sink", ["fresh.t"])
        finally:
            admin.close()
        assert sorted((p.topic, p.partition, p.committed, p.lag) for p in lags) == [
            ("fresh.t", 0, None, 0), ("fresh.t", 1, None, 0)]
    finally:
        server.stop()
