"""The Postgres sink: predictions from Kafka, upserted into ``rowcast.predictions`` in batches.

Commit order, so nothing is lost and nothing is counted twice:
Postgres transaction committed → dead letters flushed → Kafka offsets committed. A crash between
the first and last step replays the batch, and the upsert makes the replay a no-op: each
(deployment, table, key) has one row, and an older or equal (source LSN, model version) never
overwrites a newer one.

Each batch goes through ``COPY`` into a session-temporary staging table and one
``INSERT ... SELECT DISTINCT ON ... ON CONFLICT`` (one round trip, no per-row statements).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import psycopg
from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata, TopicPartition

from rowcast.connectors import position_history
from rowcast.connectors.dead_letters import DeadLetterWriter
from rowcast.core import metrics
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.errors import DecodeError
from rowcast.core.keys import stored_key
from rowcast.core.lsn import format_lsn
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import Settings

log = logging.getLogger(__name__)

COMMIT_RETRY_S = 1.0  # how often a refused offset commit is retried while no records arrive

DDL = """
CREATE SCHEMA IF NOT EXISTS rowcast;
CREATE TABLE IF NOT EXISTS rowcast.predictions (
    deployment           text NOT NULL,
    source_schema        text NOT NULL,
    source_table         text NOT NULL,
    pk                   jsonb NOT NULL,
    prediction           jsonb,
    score                double precision,
    model                text NOT NULL,
    model_version        integer NOT NULL,
    source_lsn           pg_lsn NOT NULL,
    source_committed_at  timestamptz NOT NULL,
    scored_at            timestamptz NOT NULL,
    written_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (deployment, source_schema, source_table, pk)
);
-- the operator screens read the last minutes: throughput and commit→prediction latency
CREATE INDEX IF NOT EXISTS predictions_written_at ON rowcast.predictions (written_at);
"""

COLUMNS = ("deployment", "source_schema", "source_table", "pk", "prediction", "score", "model",
           "model_version", "source_lsn", "source_committed_at", "scored_at")

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS rowcast_sink_stage
    (LIKE rowcast.predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
"""
_UPSERT = f"""
INSERT INTO rowcast.predictions ({", ".join(COLUMNS)}, written_at)
SELECT DISTINCT ON (deployment, source_schema, source_table, pk)
       {", ".join(COLUMNS)}, clock_timestamp()
FROM rowcast_sink_stage
ORDER BY deployment, source_schema, source_table, pk, source_lsn DESC, model_version DESC
ON CONFLICT (deployment, source_schema, source_table, pk) DO UPDATE SET
    prediction = EXCLUDED.prediction, score = EXCLUDED.score, model = EXCLUDED.model,
    model_version = EXCLUDED.model_version, source_lsn = EXCLUDED.source_lsn,
    source_committed_at = EXCLUDED.source_committed_at, scored_at = EXCLUDED.scored_at,
    written_at = EXCLUDED.written_at
WHERE (rowcast.predictions.source_lsn, rowcast.predictions.model_version)
    < (EXCLUDED.source_lsn, EXCLUDED.model_version)
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def predictions_pattern(settings: Settings) -> str:
    return rf"^{re.escape(settings.topic_prefix)}\.predictions\..+"


def _ts(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def upsert(conn: psycopg.Connection, records: Sequence[PredictionRecord]) -> None:
    """Write one batch in one transaction; replays and reorderings are harmless."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_STAGE)
        with cur.copy(f"COPY rowcast_sink_stage ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for r in records:
                copy.write_row((
                    r.deployment, r.schema, r.table,
                    stored_key(r.key),
                    orjson.dumps(r.prediction).decode(), r.score, r.model, r.model_version,
                    format_lsn(r.source_lsn), _ts(r.source_commit_us), _ts(r.scored_at_us),
                ))
        cur.execute(_UPSERT)


class PredictionSink:
    """Consumes every predictions topic of the prefix and keeps Postgres up to date."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, consumer: KafkaConsumer,
                 dead_letters: DeadLetterWriter) -> None:
        self.settings = settings
        self.conn = conn
        self.consumer = consumer
        self.dead_letters = dead_letters
        self.written = 0
        self.subscribed: tuple[str, ...] = ()
        self._pattern = re.compile(predictions_pattern(settings))
        self._next_refresh = 0.0
        # offsets of records already in Postgres whose commit to Kafka has not succeeded yet
        self.uncommitted: dict[TopicPartition, int] = {}
        self._last_commit_try = 0.0
        self._refused_since: float | None = None  # when commits started being refused

    def refresh_subscription(self) -> bool:
        """Subscribe to every predictions topic of the prefix; True when the set changed.

        An explicit topic list, re-read on a timer, rather than kafka-python's pattern
        subscription: with the latter a topic created while the sink ran was at times never
        assigned (observed on kafka-python 3.0), and its predictions never reached Postgres.
        """
        try:
            names = self.consumer.topics()
        except KafkaError as exc:  # broker away: keep the current subscription, retry later
            log.warning("could not list topics (%s); keeping %d subscribed", exc,
                        len(self.subscribed))
            return False
        topics = tuple(sorted(t for t in names if self._pattern.match(t)))
        if not topics or topics == self.subscribed:
            return False
        log.info("sink subscribing to %d predictions topics", len(topics))
        self.consumer.subscribe(topics=list(topics))
        self.subscribed = topics
        return True

    def run(self, stop: threading.Event) -> None:
        position_history.follow_predictions(self.conn)  # source LSNs compare only within one history
        while not stop.is_set():
            if time.monotonic() >= self._next_refresh:
                self.refresh_subscription()
                self._next_refresh = time.monotonic() + self.settings.deployment_refresh_s
            if not self.subscribed:
                stop.wait(self.settings.deployment_refresh_s)
                continue
            self.poll_once()

    def poll_once(self) -> int:
        if self._refused_since is not None and \
                time.monotonic() - self._refused_since > 2 * self.settings.kafka_session_timeout_s:
            self._rejoin()
        batch = self.consumer.poll(timeout_ms=self.settings.sink_poll_timeout_ms,
                                   max_records=self.settings.sink_batch_size)
        if not batch:
            if self.uncommitted and time.monotonic() - self._last_commit_try >= COMMIT_RETRY_S:
                self.commit()  # no new records would otherwise ever carry this commit
            return 0
        written = self._write(batch)
        self.commit()
        return written

    def _rejoin(self) -> None:
        """Leave and join the group again when commits were refused for too long.

        kafka-python 3.0 was seen to stay "rebalancing" for minutes while the broker no
        longer knew the member (its LeaveGroup at shutdown failed with UnknownMemberId):
        records kept flowing, every commit was refused, and the lag never came down. A fresh
        join fixes it; what was not committed is read again and the upsert ignores it."""
        log.warning("offset commits refused for over %.0f s: re-joining the sink group",
                    2 * self.settings.kafka_session_timeout_s)
        self.consumer.unsubscribe()
        self.consumer.subscribe(topics=list(self.subscribed))
        self.uncommitted.clear()
        self._refused_since = None

    def _write(self, batch: dict) -> int:
        """Postgres first, then dead letters, then remember the offsets to commit.

        A tombstone (the source row was deleted) deletes the row's prediction; per partition,
        records apply in their order, so a row deleted and inserted again ends predicted."""
        records: list[PredictionRecord] = []
        written = 0
        for messages in batch.values():
            for m in messages:
                if m.value is None:
                    written += self._upsert(records)
                    records = []
                    self._delete(m.topic, m.key)
                    continue
                try:
                    records.append(PredictionRecord.from_json(m.value))
                except DecodeError as exc:
                    self.dead_letters.send(DeadLetter("sink", "bad_prediction", str(exc), m.topic,
                                                      m.partition, m.offset, m.key, m.value))
        written += self._upsert(records)
        if self.dead_letters.count:
            self.dead_letters.producer.flush()
        for tp, messages in batch.items():
            self.uncommitted[tp] = messages[-1].offset + 1
        self.written += written
        return written

    def _upsert(self, records: list[PredictionRecord]) -> int:
        if records:
            upsert(self.conn, records)
            now_us = time.time_ns() // 1000
            for r in records:
                metrics.WRITTEN.labels(r.deployment).inc()
                metrics.END_TO_END_SECONDS.observe(max(now_us - r.source_commit_us, 0) / 1e6)
        return len(records)

    def _delete(self, topic: str, key: bytes | None) -> None:
        """The source row is gone: so is its prediction (the tombstone's key is the row's)."""
        prefix = f"{self.settings.topic_prefix}.predictions."
        if key is None or not topic.startswith(prefix):
            return
        try:
            pk = stored_key(orjson.loads(key))
        except orjson.JSONDecodeError:
            return
        self.conn.execute("DELETE FROM rowcast.predictions WHERE deployment = %s AND pk = %s::jsonb",
                          (topic[len(prefix):], pk))
        metrics.PREDICTIONS_DELETED.labels(topic[len(prefix):]).inc()

    def commit(self) -> bool:
        """Commit the offsets of what is in Postgres, named explicitly (kafka-python's bare
        ``commit()`` commits its own idea of the positions, which after a rebalance was seen to
        commit nothing, leaving the sink's lag at everything it had written).

        A commit refused during a rebalance is retried from :meth:`poll_once`; offsets of
        partitions no longer assigned are dropped (their new owner replays those records and
        the upsert ignores them)."""
        self._last_commit_try = time.monotonic()
        owned = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(offset, "", -1)
                   for tp, offset in self.uncommitted.items() if tp in owned}
        if not offsets:
            self.uncommitted.clear()
            self._refused_since = None
            return True
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            # the group is rebalancing (a new predictions topic, a member joining): these
            # records are in Postgres already. Not a reason to stop; retried, and a group that
            # never settles is joined again (see _rejoin).
            if self._refused_since is None:
                self._refused_since = time.monotonic()
                log.info("offset commit refused during a rebalance (%s); will retry",
                         type(exc).__name__)
            return False
        self.uncommitted.clear()
        self._refused_since = None
        return True
