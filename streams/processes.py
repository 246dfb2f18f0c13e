"""The long-running rowcast processes: CDC source, learner and Postgres sink (the worker is
faust's).

Each stops cleanly on SIGTERM or Ctrl-C: the current batch finishes (published and acked, or
written and committed) before the process exits.
"""

from __future__ import annotations

import logging
import signal
import threading

import psycopg

from rowcast.connectors import kafka_native
from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.dead_letters import DeadLetterWriter
from rowcast.connectors.kafka_clients import ensure_topics, make_consumer, make_producer
from rowcast.connectors.pg_sink import PredictionSink
from rowcast.connectors.postgres import connect
from rowcast.connectors.schema import init_database
from rowcast.core import metrics
from rowcast.core.liveness import Watchdog
from rowcast.core.settings import Settings
from rowcast.streams.memory_policy import steady_gc

log = logging.getLogger(__name__)


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop



def learner_fetch(wait_ms: int) -> dict[str, int]:
    """The learner's fetch options: the broker holds a fetch up to ``wait_ms`` to gather up to
    1 MiB of labels (see ``Settings.learner_fetch_wait_ms``).

    >>> learner_fetch(100)
    {'fetch_min_bytes': 1048576, 'fetch_max_wait_ms': 100}
    >>> learner_fetch(0)
    {}
    """
    return {"fetch_min_bytes": 1 << 20, "fetch_max_wait_ms": wait_ms} if wait_ms else {}


def source_housekeeping(settings: Settings, stop: threading.Event) -> None:
    """The source's other duties, on a thread of its own, every ``deployment_refresh_s``:

    - emit the existing rows of deployments made with ``rowcast.deploy``
      (:func:`rowcast.connectors.snapshot.serve_backfill_requests`);
    - delete the stored predictions of truncated rows (:func:`rowcast.connectors.truncations.
      clear_truncated`).

    Its own connection (and a producer made only when a request waits), so the stream's round
    never waits for a table read or a large DELETE; an error is logged and the work tried again
    on the next look."""
    from rowcast.connectors.snapshot import serve_backfill_requests
    from rowcast.connectors.truncations import clear_truncated

    conn: psycopg.Connection | None = None
    try:
        while not stop.wait(settings.deployment_refresh_s):
            try:
                if conn is None or conn.closed:
                    conn = connect(settings)
                if conn.execute("SELECT 1 FROM rowcast.backfill_requests LIMIT 1").fetchone():
                    producer = make_producer(settings)
                    try:
                        for name, count in serve_backfill_requests(conn, producer,
                                                                   settings).items():
                            log.info("emitted %d existing rows without a prediction for %s "
                                     "(deployed with rowcast.deploy)", count, name)
                    finally:
                        producer.close()
                if conn.execute("SELECT 1 FROM rowcast.truncations WHERE NOT cleared LIMIT 1"
                                ).fetchone():
                    log.info("deleted %d prediction(s) of truncated rows", clear_truncated(conn))
            except Exception as exc:  # the database or Kafka away: the stream copes; try again
                log.warning("source housekeeping: %s", exc)
                if conn is not None:
                    conn.close()
    finally:
        if conn is not None:
            conn.close()


def run_source(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or stop_on_signals()
    with Watchdog("source", settings.stall_exit_s):  # a stuck loop exits
        metrics.serve(settings.source_metrics_port, settings, "source")
        with connect(settings) as conn:
            init_database(conn, settings)
            threading.Thread(target=source_housekeeping, args=(settings, stop), daemon=True,
                             name="housekeeping").start()
            producer = make_producer(settings)
            stream = None
            try:
                if settings.source_protocol == "stream":
                    from rowcast.connectors.replication import ReplicationStream  # psycopg2: ~4 MB

                    stream = ReplicationStream(settings.postgres_dsn.get_secret_value(),
                                               settings.slot_name, settings.publication_name)
                log.info("CDC source %s slot %r (publication %r)",
                         "streaming" if stream else "peeking", settings.slot_name,
                         settings.publication_name)
                CdcSource(settings, conn, producer, stream=stream).run(stop)
            finally:
                if stream is not None:
                    stream.close()
                producer.close()


def run_sink(settings: Settings, stop: threading.Event | None = None) -> None:
    stop = stop or stop_on_signals()
    with Watchdog("sink", settings.stall_exit_s):  # a stuck loop exits
        metrics.serve(settings.sink_metrics_port, settings, "sink")
        ensure_topics(settings, [settings.dlq_topic])
        with connect(settings) as conn:
            init_database(conn, settings)
            producer = make_producer(settings)
            consumer = kafka_native.make_consumer(settings, settings.sink_group)  # ~1 µs a record
            try:
                sink = PredictionSink(settings, conn, consumer,
                                      DeadLetterWriter(producer, settings.dlq_topic))
                log.info("sink writing predictions to rowcast.predictions")
                steady_gc()  # after setup: what it froze is never scanned again
                sink.run(stop)
            finally:
                consumer.close()
                producer.close()


def run_learner(settings: Settings, stop: threading.Event | None = None) -> None:
    from rowcast.models.catalog import allow_custom_modules
    from rowcast.models.snapshot import signing_key
    from rowcast.streams.learner import Learner

    stop = stop or stop_on_signals()
    with Watchdog("learner", settings.stall_exit_s):  # a stuck loop exits
        allow_custom_modules(settings.allowed_model_modules())
        metrics.serve(settings.learner_metrics_port, settings, "learner")
        ensure_topics(settings, [settings.dlq_topic])
        ensure_topics(settings, [settings.models_topic], compacted=True, partitions=1)
        key = signing_key(settings)
        with connect(settings) as conn:
            init_database(conn, settings)
            producer = make_producer(settings)
            consumer = make_consumer(settings, settings.learner_group,
                                     **learner_fetch(settings.learner_fetch_wait_ms))
            steady_gc()
            try:
                log.info("learner: one owner per deployment, checkpoints in rowcast.model_versions")
                Learner(settings, conn, consumer, producer, key).run(stop)
            finally:
                consumer.close()
                producer.close()
