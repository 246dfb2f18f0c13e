"""The faust application, configured from rowcast's settings in one place.

Choices that matter for correctness: agents run with ``concurrency=1`` (faust#606: higher values
can commit past an in-flight event); no ``exactly_once`` processing guarantee (faust#517, #323):
exactly-once *effects* come from the idempotent sink instead. Faust flushes its producer before
every offset commit, so a committed source offset always has its predictions on Kafka. Topics
faust declares get the same replication as rowcast's (``topic_replication_factor``, resolved to
the cluster's default when it is -1), and its clients get every bootstrap host.
"""

from __future__ import annotations

import ssl

import faust

from rowcast.connectors.kafka_clients import resolved_replication_factor
from rowcast.core.settings import Settings


def create_app(settings: Settings) -> faust.App:
    datadir = settings.state_dir / "faust" / settings.scorer_group
    datadir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    replicas = resolved_replication_factor(settings)
    return faust.App(
        settings.scorer_group,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        broker_client_id=settings.kafka_client_id,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        # faust declares its own topics (the assignor's) through aiokafka, which cannot send -1
        topic_replication_factor=replicas,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=0.5,
        producer_acks=-1,
        producer_linger=0.002,
        web_enabled=settings.worker_web_enabled,
        web_bind=settings.bind_host,
        web_host=settings.bind_host,
        web_port=settings.worker_web_port,
        datadir=str(datadir),
        store="memory://",
        # records faust buffers per stream ahead of the agent: its default, 4096, is 2M rows
        # when a record is a change batch of 500 (the worker's memory, issue 15); a few
        # scorer batches ahead keep it busy
        stream_buffer_maxsize=max(4 * settings.score_batch_size, 16),
    )


def _credentials(settings: Settings) -> faust.auth.Credentials | None:
    """The same security settings as every kafka-python client (see Settings.kafka_client_config)."""
    protocol = settings.kafka_security_protocol.upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                    str(settings.kafka_ssl_keyfile)
                                    if settings.kafka_ssl_keyfile else None)
    if settings.kafka_sasl_mechanism and settings.kafka_sasl_password:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
