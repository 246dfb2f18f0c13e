"""confluent-kafka (librdkafka) producers, for the worker's per-row records (issue 15).

Why a second Kafka client: the predictions topic stays one record per row, keyed by primary
key (the contract downstream services and compaction rely on), and producing one acked record
of a 500-row batch costs ~16.6 µs of CPU with kafka-python against ~2.9 µs with librdkafka
(JSON encoding included; ``python -m bench.publish`` on the real broker). At 20,000 rows/s
kafka-python alone would take a third of a core for the predictions only. kafka-python keeps
the roles it does well (admin and topic layout, the source's batches).

The configuration is the one :func:`rowcast.connectors.kafka_clients.make_producer` gives
kafka-python, spelled in librdkafka's names (:func:`producer_config`): the connection options
through :func:`rowcast.connectors.kafka_native.client_config` (bootstrap servers, security
protocol, SASL mechanism and login, CA bundle, client certificate and key, reconnect backoff:
the table there), ``client_id`` -> ``client.id``, ``acks=all``, ``enable_idempotence`` ->
``enable.idempotence``, ``linger_ms`` -> ``linger.ms``, ``max_request_size`` ->
``message.max.bytes``, kafka-python's default ``delivery_timeout_ms`` -> ``message.timeout.ms``
(retries are unbounded within it under idempotence, as ``retries=2**31-1`` there). librdkafka's
own log lines go to this module's logger. Topics are never created by producing
(``allow.auto.create.topics=false``): rowcast lays topics out with the admin client only, so a
missing topic is a delivery error, not a topic with the broker's default layout.

:class:`ConfluentSends` is :class:`~rowcast.connectors.kafka_clients.AckedSends` for this
client: :meth:`ConfluentSends.wait` returns only once every record sent through it is
acknowledged, and raises :class:`RetryableError` if any was not, so nothing upstream is
committed on a partial batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from rowcast.connectors.kafka_native import client_config
from rowcast.core.errors import RetryableError
from rowcast.core.settings import Settings

log = logging.getLogger(__name__)

# kafka-python's delivery_timeout_ms default: how long a record may take to be acknowledged
# (retries included) before it counts as failed
DELIVERY_TIMEOUT_MS = 120_000
# as kafka-python's max_request_size in make_producer; the broker's own limit (topic
# max.message.bytes, ~1 MB by default) still applies and fails the delivery
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
POLL_EVERY = 1000  # serve delivery reports this often while producing, so the queue drains


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """A durable producer's configuration: idempotent, acks from all in-sync replicas, a small
    linger to batch, no topic auto-creation. ``overrides`` use librdkafka's names."""
    config: dict[str, Any] = {
        **client_config(settings),
        "client.id": settings.kafka_client_id,
        "acks": "all",
        "enable.idempotence": True,
        # the Java client's (and kafka-python's) murmur2, not librdkafka's default CRC32: a
        # key lands where every other Kafka client, the CDC source's batches and the
        # predictions produced before issue 15 put it (co-partitioned joins downstream)
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "batch.size": 1024 * 1024,
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        "allow.auto.create.topics": False,
    }
    config.update(overrides)
    return config


def _client_error(err: KafkaError) -> None:
    """librdkafka's client-wide errors (brokers down, authentication refused, a fatal
    idempotence error): logged; the records they concern fail their delivery on their own."""
    log.warning("Kafka producer: %s (%s)", err.str(), err.name())


def make_fast_producer(settings: Settings, **overrides: Any) -> Producer:
    """A confluent-kafka producer configured as :func:`producer_config` says."""
    return Producer({"error_cb": _client_error, **producer_config(settings, **overrides)},
                    logger=log)


class ConfluentSends:
    """Records sent through one confluent producer, and the one way to know they all reached
    Kafka: :meth:`wait`.

    Each record's delivery report comes back to the ``ConfluentSends`` that sent it, so reports
    are never mixed up between batches; :meth:`wait` flushes the producer's whole queue, so a
    producer should serve one batch at a time (the worker publishes from one thread).
    """

    def __init__(self, producer: Producer, what: str = "records",
                 timeout_s: float = DELIVERY_TIMEOUT_MS / 1000 + 10) -> None:
        self.producer = producer
        self.what = what
        self.timeout_s = timeout_s
        self.count = 0
        self.acked = 0
        self.failures: list[KafkaError] = []

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        # every record gets its report (a Python call each: measured no dearer than reporting
        # failures only, bench/publish.py), so success is counted, not inferred
        if err is None:
            self.acked += 1
        else:
            self.failures.append(err)

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int | None = None, headers: list | None = None) -> None:
        """Queue one record (a full local queue is drained by serving delivery reports)."""
        args: dict[str, Any] | None = None
        if partition is not None or headers:
            args = {"key": key, "value": value, "on_delivery": self._delivered}
            if partition is not None:
                args["partition"] = partition
            if headers:
                args["headers"] = headers
        while True:
            try:
                if args is None:  # a prediction: keyed, partitioned by librdkafka; one call
                    # without a dict to unpack, ~0.5 us less per record (one per scored row)
                    self.producer.produce(topic, value=value, key=key,
                                          on_delivery=self._delivered)
                else:
                    self.producer.produce(topic, **args)
                break
            except BufferError:  # queue.buffering.max.* reached: let librdkafka send some
                self.producer.poll(0.05)
        self.count += 1
        if self.count % POLL_EVERY == 0:
            self.producer.poll(0)

    def send_keyed(self, topic: str, records: list[dict[str, bytes | None]]) -> None:
        """Queue ``{"key": ..., "value": ...}`` records for ``topic`` in one call, each on the
        partition its key gives, in order (a ``None`` value is a tombstone); no headers
        (``produce_batch`` has none).

        Why: the worker sends one per scored row, and one ``produce_batch`` per scored
        chunk costs 0.6-1.0 µs less CPU per record than a ``produce`` call each (3.3-3.6
        vs 3.9-4.9 µs with JSON encoding and delivery report; interleaved, 500 per batch).
        Records the local queue refused (``queue.buffering.max.*``: the tail, since nothing
        leaves the queue during the call) are sent one by one after it, still in order; any
        other refusal raises, as :meth:`send` does."""
        if not records:
            return
        before = self.count
        queued = self.producer.produce_batch(topic, records, on_delivery=self._delivered)
        self.count += queued
        if queued < len(records):
            refused = records[queued:]
            if not all("_error" in r and r["_error"].code() == KafkaError._QUEUE_FULL
                       for r in refused):  # not (only) a full queue, or not the tail
                raise KafkaException(next(r["_error"] for r in records if "_error" in r))
            for r in refused:
                self.send(topic, r["key"], r["value"])
        elif self.count // POLL_EVERY != before // POLL_EVERY:
            self.producer.poll(0)

    def __len__(self) -> int:
        return self.count

    def wait(self) -> int:
        """Block until Kafka acknowledged every record sent since the last wait; their count.

        Raises :class:`RetryableError` when any record failed or the producer's queue did not
        empty within ``timeout_s`` (what is still queued is purged then: it belongs to a batch
        that will be sent again)."""
        count, self.count = self.count, 0
        if not count:
            return 0
        deadline = time.monotonic() + self.timeout_s
        left = self.producer.flush(self.timeout_s)
        while left and time.monotonic() < deadline:
            left = self.producer.flush(max(0.0, deadline - time.monotonic()))
        failures, self.failures = self.failures, []
        acked, self.acked = self.acked, 0
        if left:  # drop them rather than let a batch that failed be half delivered later
            self.producer.purge()
            self.producer.poll(0)
            raise RetryableError(f"Kafka did not acknowledge {left} of {count} {self.what} within "
                                 f"{self.timeout_s:.0f} s; is the cluster reachable?")
        if failures:
            raise RetryableError(f"Kafka did not acknowledge {len(failures)} of {count} "
                                 f"{self.what}: {failures[0].str()} ({failures[0].name()})")
        if acked != count:  # a record without a report: counted, not assumed away
            raise RetryableError(f"Kafka acknowledged {acked} of {count} {self.what}")
        return count
