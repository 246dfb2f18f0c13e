"""Every kafka-python client rowcast makes is built here, from the settings, in one way.

So SASL/SSL settings reach every client, producer durability is decided once (idempotent,
``acks=all``), and no other module touches client configuration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import TopicAlreadyExistsError

from rowcast.core.errors import RetryableError
from rowcast.core.settings import Settings


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A durable producer: idempotent, acks from all in-sync replicas, small linger to batch."""
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "retries": 2**31 - 1,
        "client_id": "rowcast",
    }
    config.update(overrides)
    return KafkaProducer(**config)


class AckedSends:
    """Records sent through one producer, and the one way to know they all reached Kafka.

    Every stage that must not move on before its records are durable (the source before it
    advances the slot, a scorer before faust commits, a backfill, a replay) sends through one of
    these and calls :meth:`wait`, which flushes and raises :class:`RetryableError` if any send
    failed, so nothing is acknowledged upstream on a partial batch.
    """

    def __init__(self, producer: KafkaProducer, what: str = "records") -> None:
        self.producer = producer
        self.what = what
        self._futures: list[Any] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None, headers: list | None = None) -> None:
        self._futures.append(self.producer.send(topic, key=key, value=value, partition=partition,
                                                headers=headers))

    def __len__(self) -> int:
        return len(self._futures)

    def wait(self) -> int:
        """Block until Kafka acknowledged every record sent since the last wait; their count."""
        if not self._futures:
            return 0
        self.producer.flush()
        failed = [f for f in self._futures if f.failed()]
        count = len(self._futures)
        self._futures.clear()
        if failed:
            raise RetryableError(f"Kafka did not acknowledge {len(failed)} of {count} {self.what}: "
                                 f"{failed[0].exception!r}")
        return count


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer that never commits on its own: callers commit after their writes are durable."""
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "client_id": "rowcast",
        "metadata_max_age_ms": 5000,
        "session_timeout_ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat_interval_ms": 1000,
    }
    config.update(overrides)
    return KafkaConsumer(**config)


def make_admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(**settings.kafka_client_config(), client_id="rowcast-admin")


def check_kafka(settings: Settings) -> None:
    """Connect and list topics once, so a command fails before it changes anything when Kafka
    is unreachable or refuses the credentials (raises kafka-python's error)."""
    admin = make_admin(settings)
    try:
        admin.list_topics()
    finally:
        admin.close()


def ensure_topics(settings: Settings, names: Iterable[str], compacted: bool = False,
                  partitions: int | None = None) -> None:
    """Create missing topics (default: the configured partition count); existing ones are left
    as is."""
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        configs = {"cleanup.policy": "compact"} if compacted else {}
        missing = {
            name: {"num_partitions": partitions or settings.topic_partitions,
                   "replication_factor": 1,
                   "configs": configs}
            for name in sorted(set(names)) if name not in existing
        }
        if missing:
            # another process may create one between list and create: that is fine
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing, wait_for_metadata=True)
    finally:
        admin.close()


def ensure_deployment_topics(settings: Settings, deployments: Iterable[str]) -> None:
    """Everything a deployment's records travel on: predictions (partitioned like the source),
    labels (one partition, one learner), the compacted models topic and the dead letters."""
    names = sorted(set(deployments))
    ensure_topics(settings, [settings.predictions_topic(n) for n in names] + [settings.dlq_topic])
    ensure_topics(settings, [settings.labels_topic(n) for n in names], partitions=1)
    ensure_topics(settings, [settings.models_topic], compacted=True, partitions=1)
