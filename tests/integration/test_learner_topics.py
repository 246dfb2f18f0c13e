"""The learner subscribes only to labels topics that exist with rowcast's layout: a deployment
made with the SQL function has none until a worker makes them, and rowcast's clients never let
a subscription create one (the broker would give it its defaults)."""

from __future__ import annotations

import logging
import uuid

from rowcast.connectors.kafka_clients import make_admin, make_consumer, make_producer
from rowcast.connectors.schema import init_database
from rowcast.models.snapshot import signing_key
from rowcast.streams.learner import Learner


def test_a_new_deployment_gets_its_labels_topic_before_the_learner_subscribes(
        settings, pg_conn, caplog):
    table = f"lt_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    init_database(pg_conn, settings)
    name = pg_conn.execute("SELECT name FROM rowcast.deploy(%s, %s, 'y', ARRAY['x'])",
                           (table, f"public.{table}")).fetchone()[0]
    consumer = make_consumer(settings, settings.learner_group)
    producer = make_producer(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="kafka"):
            Learner(settings, pg_conn, consumer, producer, signing_key(settings)).refresh()
            consumer.poll(timeout_ms=500)
    finally:
        consumer.close()
        producer.close()
    admin = make_admin(settings)
    try:
        described = admin.describe_topics([settings.labels_topic(name)])
    finally:
        admin.close()
    assert [len(t["partitions"]) for t in described] == [1]
    assert not [r for r in caplog.records if "not found in cluster metadata" in r.getMessage()]
