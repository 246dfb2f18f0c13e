"""confluent-kafka (librdkafka) clients, for the hot paths where kafka-python's per-record cost
does not fit issue 15's budget (measured by ``python -m bench.sink``: consuming a prediction
record costs 6.4 µs of CPU with kafka-python, 0.5 µs with librdkafka).

Built from the same settings as :mod:`rowcast.connectors.kafka_clients` so a SASL/SSL deployment
reaches these clients too. Every kafka-python option ``kafka_client_config`` and
``make_consumer`` set has its librdkafka name here:

==========================  ====================================
kafka-python                librdkafka
==========================  ====================================
bootstrap_servers           bootstrap.servers (comma-joined)
security_protocol           security.protocol
sasl_mechanism              sasl.mechanism
sasl_plain_username         sasl.username
sasl_plain_password         sasl.password
ssl_cafile                  ssl.ca.location
ssl_certfile                ssl.certificate.location
ssl_keyfile                 ssl.key.location
reconnect_backoff_max_ms    reconnect.backoff.max.ms
group_id                    group.id
enable_auto_commit=False    enable.auto.commit=false (+ enable.auto.offset.store=false)
auto_offset_reset           auto.offset.reset
client_id                   client.id
metadata_max_age_ms         metadata.max.age.ms
session_timeout_ms          session.timeout.ms
heartbeat_interval_ms       heartbeat.interval.ms
==========================  ====================================

Host-name verification is on in both by default (kafka-python ``ssl_check_hostname``,
librdkafka ``ssl.endpoint.identification.algorithm=https``). librdkafka's own log lines go
to this module's logger, not to stderr.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer

from rowcast.core.settings import Settings

log = logging.getLogger(__name__)

_RENAMED = {
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
}


def client_config(settings: Settings) -> dict[str, Any]:
    """``Settings.kafka_client_config()`` in librdkafka's names (see the module table)."""
    cfg = settings.kafka_client_config()
    out: dict[str, Any] = {"bootstrap.servers": ",".join(cfg.pop("bootstrap_servers"))}
    for name, value in cfg.items():
        if name not in _RENAMED:  # a new connection option must be mapped, not dropped
            raise KeyError(f"no librdkafka name for the Kafka client option {name!r}")
        out[_RENAMED[name]] = value
    return out


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """Like ``kafka_clients.make_consumer``: never commits on its own (callers commit the
    offsets of what they made durable), starts at the earliest offset of a new group."""
    config: dict[str, Any] = {
        **client_config(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "client.id": settings.kafka_client_id,
        "metadata.max.age.ms": 5000,
        "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat.interval.ms": 1000,
    }
    config.update(overrides)
    return Consumer(config, logger=log)
