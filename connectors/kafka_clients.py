"""Every kafka-python client rowcast makes is built here, from the settings, in one way.

So SASL/SSL settings reach every client, producer durability is decided once (idempotent,
``acks=all``), and no other module touches client configuration.

Topics are laid out here too. Their replication factor and ``min.insync.replicas`` come from
the settings, and by default from the cluster itself (replication factor ``-1`` at creation:
the broker's ``default.replication.factor``), so rowcast is durable on a real cluster without
anyone asking and still runs on a single dev broker. :func:`layout_problems` names topics whose
layout differs from what the settings ask for (``rowcast status`` shows them: an old topic made
with one replica is not silently trusted), and :func:`thin_durability` is ``rowcast deploy``'s
one-line warning when acknowledged writes would survive only one broker on a larger cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
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
        "client_id": settings.kafka_client_id,
        # rowcast lays its topics out with the admin client only (ensure_topics): a send or a
        # metadata request must never create one with the broker's defaults (auto-creation
        # is on for Debezium's topics; kafka-python's default asks for it: the source, seeing
        # rows before the deployment's topic existed, made it with one partition)
        "allow_auto_create_topics": False,
    }
    config.update(overrides)
    return _without_auto_creation(KafkaProducer(**config), config)


Client = TypeVar("Client", KafkaProducer, KafkaConsumer)


def _without_auto_creation(client: Client, config: dict[str, Any]) -> Client:
    """kafka-python 3.0.12 builds the metadata its requests come from without the client's
    ``allow_auto_create_topics`` (``kafka/net/manager.py`` passes only the bootstrap servers,
    the max age and the DNS mode), so every metadata request asked the broker to create
    missing topics, with its defaults: the source, seeing a deployment's rows before its topic
    existed, made the change topic with one partition. The setting is applied to that metadata
    here, where this version keeps it; a version that honours the option needs nothing."""
    metadata = getattr(client, "_metadata", None) or getattr(
        getattr(client, "_client", None), "cluster", None)
    settings = getattr(metadata, "config", None)
    if isinstance(settings, dict) and "allow_auto_create_topics" in settings:
        settings["allow_auto_create_topics"] = config.get("allow_auto_create_topics", True)
    return client


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
        "client_id": settings.kafka_client_id,
        "metadata_max_age_ms": 5000,
        "allow_auto_create_topics": False,  # as make_producer: topics come from ensure_topics
        "session_timeout_ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat_interval_ms": 1000,
    }
    config.update(overrides)
    return _without_auto_creation(KafkaConsumer(**config), config)


def make_admin(settings: Settings) -> KafkaAdminClient:
    """An admin client over every bootstrap host (it follows the controller and leaders itself)."""
    return KafkaAdminClient(**settings.kafka_client_config(), client_id=f"{settings.kafka_client_id}-admin")


@dataclass(frozen=True)
class TopicLayout:
    """How a topic is replicated: its replication factor and the in-sync replicas an
    ``acks=all`` write needs (None when unknown)."""

    topic: str
    replicas: int
    min_insync: int | None


@dataclass(frozen=True)
class ClusterDefaults:
    """What the cluster gives a topic created without its own settings."""

    brokers: int
    replication_factor: int
    min_insync: int


def cluster_defaults(admin: KafkaAdminClient) -> ClusterDefaults:
    """The broker count and a broker's ``default.replication.factor`` / ``min.insync.replicas``
    (every broker of a sane cluster has the same; the first one answers)."""
    brokers = admin.describe_cluster()["brokers"]
    broker_id = str(min(b["broker_id"] for b in brokers))
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, broker_id,
                        ["default.replication.factor", "min.insync.replicas"])],
        config_filter="all")["broker"][broker_id]
    return ClusterDefaults(len(brokers), int(described["default.replication.factor"]["value"]),
                           int(described["min.insync.replicas"]["value"]))


def expected_layout(settings: Settings, defaults: ClusterDefaults) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) a topic rowcast creates gets on this cluster."""
    replicas = settings.topic_replication_factor
    if replicas == -1:
        replicas = defaults.replication_factor
    return replicas, settings.topic_min_insync_replicas or defaults.min_insync


def resolved_replication_factor(settings: Settings) -> int:
    """The replication factor as a number, for clients that cannot send ``-1`` (aiokafka's
    CreateTopics is v3 at most, KIP-464's ``-1`` needs v4): the setting, or the cluster's
    default."""
    if settings.topic_replication_factor != -1:
        return settings.topic_replication_factor
    admin = make_admin(settings)
    try:
        return cluster_defaults(admin).replication_factor
    finally:
        admin.close()


def topic_layouts(admin: KafkaAdminClient, topics: Iterable[str]) -> list[TopicLayout]:
    """The layout of each existing topic among ``topics`` (the fewest replicas of any
    partition; ``min.insync.replicas`` as the topic resolves it)."""
    names = sorted(set(topics) & set(admin.list_topics()))
    if not names:
        return []
    described = {t["name"]: t for t in admin.describe_topics(names) if not t["error_code"]}
    configs = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, ["min.insync.replicas"])
         for name in described], config_filter="all").get("topic", {})
    layouts = []
    for name, topic in sorted(described.items()):
        replicas = min((len(p["replica_nodes"]) for p in topic["partitions"]), default=0)
        value = configs.get(name, {}).get("min.insync.replicas", {}).get("value")
        layouts.append(TopicLayout(name, replicas, int(value) if value is not None else None))
    return layouts


def layout_problems(layouts: Iterable[TopicLayout], replicas: int, min_insync: int) -> list[str]:
    """One line per topic laid out otherwise than rowcast would create it now (pure)."""
    problems = []
    for t in layouts:
        differs = []
        if t.replicas != replicas:
            differs.append(f"{t.replicas} replica(s), expected {replicas}")
        if t.min_insync is not None and t.min_insync != min_insync:
            differs.append(f"min.insync.replicas {t.min_insync}, expected {min_insync}")
        if differs:
            problems.append(f"topic {t.topic}: {', '.join(differs)}")
    return problems


def thin_durability(created: Iterable[TopicLayout], brokers: int) -> str | None:
    """The one-line warning for topics just created that accept a write held by one broker
    only (fewer than 2 in-sync replicas required) on a cluster of 3 or more brokers (pure)."""
    thin = sorted(t.topic for t in created if t.min_insync is not None and t.min_insync < 2)
    if brokers < 3 or not thin:
        return None
    return (f"warning: {len(thin)} topic(s) created on a {brokers}-broker cluster acknowledge "
            f"writes held by one broker only (min.insync.replicas < 2, e.g. {thin[0]}); set "
            "ROWCAST_TOPIC_MIN_INSYNC_REPLICAS=2 or the brokers' min.insync.replicas")


CHECK_BOOTSTRAP_MS = 10_000  # an operator waiting on a command (kafka-python's default: 30 s)


def check_kafka(settings: Settings) -> None:
    """Connect and list topics once, so a command fails before it changes anything when Kafka
    is unreachable or refuses the credentials (raises kafka-python's error). Gives up after
    :data:`CHECK_BOOTSTRAP_MS`: `rowcast deploy` against a broker that refused every
    connection said so after 32 s."""
    admin = KafkaAdminClient(**settings.kafka_client_config(),
                             client_id=f"{settings.kafka_client_id}-admin",
                             bootstrap_timeout_ms=CHECK_BOOTSTRAP_MS)
    try:
        admin.list_topics()
    finally:
        admin.close()


def topic_spec(settings: Settings, compacted: bool = False,
               partitions: int | None = None) -> dict[str, Any]:
    """How rowcast creates a topic: the configured partitions, replication factor (-1: the
    broker's default) and min.insync.replicas (absent: the broker's default)."""
    configs = {"cleanup.policy": "compact"} if compacted else {}
    if settings.topic_min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    return {"num_partitions": partitions or settings.topic_partitions,
            "replication_factor": settings.topic_replication_factor, "configs": configs}


def ensure_topics(settings: Settings, names: Iterable[str], compacted: bool = False,
                  partitions: int | None = None) -> list[TopicLayout]:
    """Create missing topics (see :func:`topic_spec`); existing ones are left as is (their
    layout is for :func:`layout_problems` to judge). The layouts of the topics created."""
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        spec = topic_spec(settings, compacted, partitions)
        missing = {name: spec for name in sorted(set(names)) if name not in existing}
        if not missing:
            return []
        # another process may create one between list and create: that is fine
        with contextlib.suppress(TopicAlreadyExistsError):
            created = admin.create_topics(missing, wait_for_metadata=True)
            return [TopicLayout(t["name"], t.get("replication_factor", -1),
                                _config_int(t.get("configs"), "min.insync.replicas"))
                    for t in (created or {}).get("topics", [])]
        return []
    finally:
        admin.close()


def _config_int(configs: dict | None, key: str) -> int | None:
    value = (configs or {}).get(key, {}).get("value")
    return int(value) if value is not None else None


def deployment_topic_names(settings: Settings, deployments: Iterable[str]) -> list[str]:
    """Every topic :func:`ensure_deployment_topics` makes for these deployments."""
    names = sorted(set(deployments))
    return ([settings.predictions_topic(n) for n in names] + [settings.dlq_topic]
            + [settings.labels_topic(n) for n in names] + [settings.models_topic])


def ensure_deployment_topics(settings: Settings, deployments: Iterable[str]) -> list[TopicLayout]:
    """Everything a deployment's records travel on: predictions (partitioned like the source),
    labels (one partition, one learner), the compacted models topic and the dead letters. The
    layouts of the topics created."""
    names = sorted(set(deployments))
    return (ensure_topics(settings, [settings.predictions_topic(n) for n in names]
                          + [settings.dlq_topic])
            + ensure_topics(settings, [settings.labels_topic(n) for n in names], partitions=1)
            + ensure_topics(settings, [settings.models_topic], compacted=True, partitions=1))
