"""The confluent-kafka producer gets every connection option kafka-python clients get, and a
label batch too large for one record is split in order (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rowcast.connectors.fast_kafka import producer_config
from rowcast.core.label_events import LabelEvent, decode_batch, encode_batch
from rowcast.core.settings import Settings
from rowcast.streams.publishing import label_records


def test_every_security_option_reaches_the_producer():
    s = Settings(kafka_bootstrap="a:1,b:2", kafka_security_protocol="SASL_SSL",
                 kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="u",
                 kafka_sasl_password="pw", kafka_ssl_cafile=Path("/ca.pem"),
                 kafka_ssl_certfile=Path("/c.pem"), kafka_ssl_keyfile=Path("/c.key"),
                 kafka_reconnect_backoff_max_ms=777, _env_file=None)
    cfg = producer_config(s)
    assert {k: cfg[k] for k in cfg if "." in k and k.split(".")[0] in {
        "bootstrap", "security", "sasl", "ssl", "reconnect"}} == {
        "bootstrap.servers": "a:1,b:2", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/c.key", "reconnect.backoff.max.ms": 777}


def test_the_producer_is_durable_and_never_creates_topics():
    cfg = producer_config(Settings(_env_file=None))
    assert cfg["acks"] == "all" and cfg["enable.idempotence"] is True
    assert cfg["allow.auto.create.topics"] is False and cfg["client.id"] == "rowcast"


def test_an_unknown_kafka_python_option_is_not_silently_dropped(monkeypatch):
    monkeypatch.setattr(Settings, "kafka_client_config",
                        lambda self: {"bootstrap_servers": ["a:1"], "ssl_crlfile": "/x"})
    with pytest.raises(KeyError, match="ssl_crlfile"):
        producer_config(Settings(_env_file=None))


def events(n: int) -> list[LabelEvent]:
    return [LabelEvent("labelled", "d", "1.1", {"id": i}, "t:0", (i, 0, 0), i,
                       {"x": float(i)}, float(i)) for i in range(n)]


def test_label_batches_are_split_in_order_under_the_limit():
    batch = events(400)
    assert label_records(batch) == [encode_batch(batch)]
    limit = len(encode_batch(batch)) // 7
    records = label_records(batch, limit)
    assert len(records) >= 7 and all(len(r) <= limit for r in records)
    assert [e for r in records for e in decode_batch(r)] == batch


def test_an_event_larger_than_the_limit_still_gets_a_record():
    batch = events(3)
    records = label_records(batch, 10)
    assert [decode_batch(r) for r in records] == [[e] for e in batch]
