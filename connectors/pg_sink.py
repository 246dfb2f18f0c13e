"""The Postgres sink: predictions from Kafka, upserted into ``rowcast.predictions`` in batches.

Commit order, so nothing is lost and nothing is counted twice:
Postgres transaction committed → dead letters flushed → Kafka offsets committed. A crash between
the first and last step replays the batch, and the upsert makes the replay a no-op: each
(deployment, table, key) has one row, and an older or equal (source LSN, model version) never
overwrites a newer one. Partitions taken away by a rebalance get the offsets of what is already
in Postgres committed from the revoke callback (it runs inside ``consume``, between batches),
so their new owner does not replay them.

Each batch goes through ``COPY`` into a session-temporary staging table and one
``INSERT ... SELECT DISTINCT ON ... ON CONFLICT`` (one round trip, no per-row statements).
Cost per row, measured with ``python -m bench.sink`` (issue 15): consuming with librdkafka
(confluent-kafka) instead of kafka-python, COPY text lines built directly (LSN and times
staged as integers, converted by the server) and the latency histogram fed per batch took the
sink's client CPU from ~19 to ~6 µs per row.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import Histogram

from rowcast.connectors import position_history
from rowcast.connectors.copy_text import copy_text
from rowcast.connectors.dead_letters import DeadLetterWriter
from rowcast.core import liveness, metrics
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.errors import DecodeError
from rowcast.core.keys import stored_key
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

# staged as the record carries them: LSN and times as integers (no client-side formatting);
# the upsert converts them, exactly (µs since the epoch, well within float8's 2^53)
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS rowcast_sink_batch (
    deployment text, source_schema text, source_table text, pk jsonb, prediction jsonb,
    score double precision, model text, model_version integer, source_lsn numeric,
    commit_us bigint, scored_us bigint) ON COMMIT DELETE ROWS
"""
_COPY = "COPY rowcast_sink_batch FROM STDIN"
_EPOCH = "timestamptz '1970-01-01 00:00:00+00'"
# a prediction of a row changed before its table's last TRUNCATE is of a row that is gone
# (rowcast.connectors.truncations)
_NOT_TRUNCATED = """
WHERE NOT EXISTS (SELECT 1 FROM rowcast.truncations t
                   WHERE t.schema_name = b.source_schema AND t.table_name = b.source_table
                     AND pg_lsn '0/0' + b.source_lsn < t.lsn)"""
_UPSERT = f"""
INSERT INTO rowcast.predictions ({", ".join(COLUMNS)}, written_at)
SELECT DISTINCT ON (deployment, source_schema, source_table, pk)
       deployment, source_schema, source_table, pk, prediction, score, model, model_version,
       pg_lsn '0/0' + source_lsn, {_EPOCH} + commit_us * interval '1 microsecond',
       {_EPOCH} + scored_us * interval '1 microsecond', clock_timestamp()
FROM rowcast_sink_batch b{_NOT_TRUNCATED}
ORDER BY deployment, source_schema, source_table, pk, source_lsn DESC, model_version DESC
ON CONFLICT (deployment, source_schema, source_table, pk) DO UPDATE SET
    prediction = EXCLUDED.prediction, score = EXCLUDED.score, model = EXCLUDED.model,
    model_version = EXCLUDED.model_version, source_lsn = EXCLUDED.source_lsn,
    source_committed_at = EXCLUDED.source_committed_at, scored_at = EXCLUDED.scored_at,
    written_at = EXCLUDED.written_at
WHERE (rowcast.predictions.source_lsn, rowcast.predictions.model_version)
    < (EXCLUDED.source_lsn, EXCLUDED.model_version)
"""

# the same rows when none is stored yet nor twice in the batch (else a unique violation): no
# sort, no conflict check per row
_INSERT = f"""
INSERT INTO rowcast.predictions ({", ".join(COLUMNS)}, written_at)
SELECT deployment, source_schema, source_table, pk, prediction, score, model, model_version,
       pg_lsn '0/0' + source_lsn, {_EPOCH} + commit_us * interval '1 microsecond',
       {_EPOCH} + scored_us * interval '1 microsecond', clock_timestamp()
FROM rowcast_sink_batch b{_NOT_TRUNCATED}
"""
UPSERT_AFTER_CONFLICT_S = 10.0  # after a batch met stored rows, upsert directly this long

# group coordination errors that refuse a commit until the group settles (then retried)
_REFUSED = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
            KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST, KafkaError._STATE,
            KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR,
            KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._WAIT_COORD,
            KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def predictions_pattern(settings: Settings) -> str:
    return rf"^{re.escape(settings.topic_prefix)}\.predictions\..+"


def copy_lines(records: Sequence[PredictionRecord]) -> bytes:
    """The batch in COPY text format, one line per record, staged columns in order.

    Built as text directly: psycopg's per-value adaptation (LSN formatting, datetimes) cost
    ~5 µs a row, these lines ~1 µs. JSON from orjson has no raw control characters, but its
    backslash escapes must be doubled."""
    names: dict[str, str] = {}  # deployment, schema, table and model repeat within a batch
    lines = []
    for r in records:
        dep = names.get(r.deployment) or names.setdefault(r.deployment, copy_text(r.deployment))
        schema = names.get(r.schema) or names.setdefault(r.schema, copy_text(r.schema))
        table = names.get(r.table) or names.setdefault(r.table, copy_text(r.table))
        model = names.get(r.model) or names.setdefault(r.model, copy_text(r.model))
        score = "\\N" if r.score is None else repr(float(r.score))
        lines.append(f"{dep}\t{schema}\t{table}\t{copy_text(stored_key(r.key))}\t"
                     f"{copy_text(orjson.dumps(r.prediction).decode())}\t{score}\t{model}\t"
                     f"{int(r.model_version)}\t{int(r.source_lsn)}\t{int(r.source_commit_us)}\t"
                     f"{int(r.scored_at_us)}\n")
    return "".join(lines).encode()


def upsert(conn: psycopg.Connection, records: Sequence[PredictionRecord],
           try_insert: bool = True) -> bool:
    """Write one batch in one transaction; replays and reorderings are harmless.

    New rows (most batches: inserts being scored) go in with a plain INSERT when
    ``try_insert``; when one of them is stored already or comes twice, that transaction rolls
    back and the batch is upserted in a second one. The upsert's speculative insertion probed
    the primary key per row (7.3-7.6 vs 4.4 µs of server CPU per prediction). Returns True
    when the plain INSERT wrote the batch.

    Four round trips (BEGIN, COPY, INSERT, COMMIT): at a trickle a batch is a few rows every
    few milliseconds, and the staging table's DDL and a savepoint around the INSERT made it
    seven (5 rows: 610 → 417 µs of server CPU, 441 → 258 of the sink's). So the staging table
    is made once per session (and again if the session lost it: ``DISCARD TEMP``), and a
    conflict costs a second COPY instead of every batch paying a savepoint; after one the
    sink upserts directly for a while (:data:`UPSERT_AFTER_CONFLICT_S`)."""
    lines = copy_lines(records)
    try:
        return _write(conn, lines, try_insert, stage=conn not in _STAGED)
    except psycopg.errors.UndefinedTable:  # the session lost its staging table
        _STAGED.discard(conn)
        return _write(conn, lines, try_insert, stage=True)


_STAGED: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()  # sessions with the table


def _write(conn: psycopg.Connection, lines: bytes, try_insert: bool, stage: bool) -> bool:
    if try_insert:
        try:
            _stage_and_run(conn, lines, _INSERT, stage)
            return True
        except psycopg.errors.UniqueViolation:
            pass  # rolled back, the staging table's DDL with it if it was made here
    _stage_and_run(conn, lines, _UPSERT, stage)
    return False


def _stage_and_run(conn: psycopg.Connection, lines: bytes, statement: str, stage: bool) -> None:
    with conn.transaction(), conn.cursor() as cur:
        if stage:
            cur.execute(_STAGE)
        with cur.copy(_COPY) as copy:
            copy.write(lines)
        cur.execute(statement)
    _STAGED.add(conn)


# What PostgreSQL refuses in one prediction, not the server or the connection: a value out of
# range, a key too large for the primary key's index (``index row size ... exceeds``), a
# constraint. Such a record goes to the dead-letter topic alone; the sink keeps going.
UNSTORABLE = (psycopg.errors.DataError, psycopg.errors.IntegrityError,
              psycopg.errors.ProgramLimitExceeded)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def observe_latencies(histogram: Histogram, now_us: int,
                      records: Sequence[PredictionRecord]) -> None:
    """Commit → written for every record, as ``observe`` per record would count it, but with
    one bucket increment per distinct commit time (a transaction's rows share one)."""
    per_commit = Counter(r.source_commit_us for r in records)
    metrics.observe_counts(histogram, {max(now_us - commit_us, 0) / 1e6: count
                                       for commit_us, count in per_commit.items()})


class PredictionSink:
    """Consumes every predictions topic of the prefix and keeps Postgres up to date.

    ``consumer`` is a confluent-kafka ``Consumer`` (:func:`rowcast.connectors.kafka_native.
    make_consumer`): at 20,000 rows/s kafka-python's ~6 µs per record was a third of the
    sink's CPU."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, consumer: Consumer,
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
        self.uncommitted: dict[tuple[str, int], int] = {}
        self._last_commit_try = 0.0
        self._refused_since: float | None = None  # when commits started being refused
        self._upsert_until = 0.0  # until then batches go straight to the upsert

    def refresh_subscription(self) -> bool:
        """Subscribe to every predictions topic of the prefix; True when the set changed.

        An explicit topic list, re-read on a timer (a pattern subscription was at times seen
        never to assign a topic created while the sink ran, with kafka-python 3.0)."""
        try:
            names = self.consumer.list_topics(timeout=10).topics
        except KafkaException as exc:  # broker away: keep the current subscription, retry later
            log.warning("could not list topics (%s); keeping %d subscribed", exc,
                        len(self.subscribed))
            return False
        topics = tuple(sorted(t for t in names if self._pattern.match(t)))
        if not topics or topics == self.subscribed:
            return False
        log.info("sink subscribing to %d predictions topics", len(topics))
        self._subscribe(topics)
        return True

    def _subscribe(self, topics: tuple[str, ...]) -> None:
        self.consumer.subscribe(list(topics), on_revoke=self._revoked)
        self.subscribed = topics

    def run(self, stop: threading.Event) -> None:
        position_history.follow_predictions(self.conn)  # source LSNs compare only within one history
        while not stop.is_set():
            liveness.beat()
            if time.monotonic() >= self._next_refresh:
                self.refresh_subscription()
                self._next_refresh = time.monotonic() + self.settings.deployment_refresh_s
            if not self.subscribed:
                stop.wait(self.settings.deployment_refresh_s)
                continue
            self.poll_once()
        if self.uncommitted:  # at stop: what is in Postgres (a refusal is replayed, harmless)
            self.commit()

    def poll_once(self) -> int:
        if self._refused_since is not None and \
                time.monotonic() - self._refused_since > 2 * self.settings.kafka_session_timeout_s:
            self._rejoin()
        batch = [m for m in self._take() if not _failed(m)]
        since = time.monotonic() - self._last_commit_try
        if not batch:
            wait = COMMIT_RETRY_S if self._refused_since is not None \
                else self.settings.sink_commit_interval_s
            if self.uncommitted and since >= wait:
                self.commit()  # no new records would otherwise ever carry this commit
            return 0
        written = self._write(batch)
        if since >= self.settings.sink_commit_interval_s:
            self.commit()
        return written

    def _take(self) -> list[Message]:
        """What has arrived, up to a batch, without waiting for more; when nothing has, the
        first record to come (within the poll timeout) and what comes within
        ``sink_linger_ms`` of it. (librdkafka's ``consume(n, timeout)`` waits for n records or
        the timeout, so a longer timeout there would be paid by every batch below n.)

        Why linger: the worker's producer (librdkafka) sends a ProduceRequest per partition
        (librdkafka issue 1700), so one source round's predictions reach the sink as two to
        four fetches a fraction of a millisecond apart. Taken at once, each was a transaction
        of its own: at 300 rows/s, 2 ms cut the transactions rowcast makes PostgreSQL commit
        from 305 to 249 a second (``make bench-rates``)."""
        n = self.settings.sink_batch_size
        got = self.consumer.consume(n, 0)
        if got:
            return got
        first = self.consumer.poll(self.settings.sink_poll_timeout_ms / 1000)
        if first is None:
            return []
        if n == 1:
            return [first]
        return [first, *self.consumer.consume(n - 1, self.settings.sink_linger_ms / 1000)]

    def _rejoin(self) -> None:
        """Leave and join the group again when commits were refused for too long.

        kafka-python 3.0 was seen to stay "rebalancing" for minutes while the broker no
        longer knew the member; kept for any client that gets stuck so: a fresh join fixes
        it, and what was not committed is read again and the upsert ignores it."""
        log.warning("offset commits refused for over %.0f s: re-joining the sink group",
                    2 * self.settings.kafka_session_timeout_s)
        self.consumer.unsubscribe()
        self._subscribe(self.subscribed)
        self.uncommitted.clear()
        self._refused_since = None

    def _write(self, batch: Sequence[Message]) -> int:
        """Postgres first, then dead letters, then remember the offsets to commit.

        A tombstone (the source row was deleted) deletes the row's prediction; per partition,
        records apply in their order, so a row deleted and inserted again ends predicted."""
        records: list[PredictionRecord] = []
        sources: list[Message] = []  # each record's message, for a dead letter
        written = 0
        offsets: dict[tuple[str, int], int] = {}
        for m in batch:
            value = m.value()
            offsets[(m.topic(), m.partition())] = m.offset() + 1
            if value is None:
                written += self._upsert(records, sources)
                records, sources = [], []
                self._delete(m.topic(), m.key())
                continue
            try:
                records.append(PredictionRecord.from_json(value))
                sources.append(m)
            except DecodeError as exc:
                self.dead_letters.send(DeadLetter("sink", "bad_prediction", str(exc), m.topic(),
                                                  m.partition(), m.offset(), m.key(), value))
        written += self._upsert(records, sources)
        if self.dead_letters.count:
            self.dead_letters.producer.flush()
        self.uncommitted.update(offsets)
        self.written += written
        return written

    def _upsert(self, records: list[PredictionRecord], sources: Sequence[Message]) -> int:
        if records:
            now = time.monotonic()
            tried = now >= self._upsert_until
            try:
                if not upsert(self.conn, records, try_insert=tried) and tried:
                    # rows are being updated or replayed: a failed INSERT first would cost twice
                    self._upsert_until = now + UPSERT_AFTER_CONFLICT_S
            except UNSTORABLE as exc:
                log.warning("PostgreSQL refused a batch of %d predictions (%s): writing it row "
                            "by row", len(records), _first_line(exc))
                records = self._one_by_one(records, sources)
            for name, count in Counter(r.deployment for r in records).items():
                metrics.WRITTEN.labels(name).inc(count)
            observe_latencies(metrics.END_TO_END_SECONDS, time.time_ns() // 1000, records)
        return len(records)

    def _one_by_one(self, records: Sequence[PredictionRecord],
                    sources: Sequence[Message]) -> list[PredictionRecord]:
        """Each record in its own transaction, in order; one PostgreSQL cannot store goes to
        the dead-letter topic with the server's reason, the others are written."""
        written = []
        for r, m in zip(records, sources, strict=True):
            try:
                upsert(self.conn, [r], try_insert=False)
                written.append(r)
            except UNSTORABLE as exc:
                self.dead_letters.send(DeadLetter(
                    "sink", "unstorable_prediction", _first_line(exc), m.topic(), m.partition(),
                    m.offset(), m.key(), m.value(), {"deployment": r.deployment}))
        return written

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

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions going to another member: commit what of them is in Postgres now.

        Called inside ``consume``, so the last batch is written and its dead letters flushed;
        without this the new owner would read that batch again (harmless, but wasted)."""
        moving = [TopicPartition(tp.topic, tp.partition, self.uncommitted.pop(key))
                  for tp in partitions if (key := (tp.topic, tp.partition)) in self.uncommitted]
        if moving:
            try:
                consumer.commit(offsets=moving, asynchronous=False)
            except KafkaException as exc:  # the new owner replays; the upsert ignores it
                log.info("could not commit revoked partitions (%s)", exc.args[0])

    def commit(self) -> bool:
        """Commit the offsets of what is in Postgres, named explicitly.

        A commit refused while the group rebalances or the coordinator is away is retried from
        :meth:`poll_once`; offsets of partitions no longer assigned are dropped (their new
        owner replays those records and the upsert ignores them)."""
        self._last_commit_try = time.monotonic()
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = [TopicPartition(topic, partition, offset)
                   for (topic, partition), offset in self.uncommitted.items()
                   if (topic, partition) in owned]
        if not offsets:
            self.uncommitted.clear()
            self._refused_since = None
            return True
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or error.fatal() or error.code() not in _REFUSED:
                raise
            # the group is rebalancing (a new predictions topic, a member joining) or the
            # coordinator moves: these records are in Postgres already. Not a reason to stop;
            # retried, and a group that never settles is joined again (see _rejoin).
            if self._refused_since is None:
                self._refused_since = time.monotonic()
                log.info("offset commit refused (%s); will retry", error.name())
            return False
        self.uncommitted.clear()
        self._refused_since = None
        return True


def _failed(message: Message) -> bool:
    """An error event from ``consume`` rather than a record: fatal ones raise, others (a topic
    deleted with its deployment, a broker restarting) are logged; librdkafka recovers."""
    error = message.error()
    if error is None:
        return False
    if error.fatal():
        raise KafkaException(error)
    log.info("Kafka consumer: %s", error.str())
    return True
