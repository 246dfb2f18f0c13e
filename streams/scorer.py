"""The scoring agent: micro-batches of change events in, predictions and dead letters out.

All decisions live in :class:`rowcast.models.serving.ServingSet`; this module only moves bytes between
faust and that pure core. Batches (:func:`rowcast.streams.micro_batches.micro_batches`) are acked
after the body returns,
and the body returns only after :class:`rowcast.streams.publishing.BatchPublisher` saw Kafka acknowledge
every prediction and dead letter of the batch, so every committed offset has them on Kafka.

A record is either a change batch (:mod:`rowcast.core.change_batch`, header ``rowcast.batch``:
the rows of one table and partition, what rowcast's source writes by default) or one per-row
Debezium envelope (``ROWCAST_SOURCE_FORMAT=debezium``, a real Debezium connector, snapshots and
backfills); both become the same change events, scored together (linear and logistic models at
once per deployment, see :mod:`rowcast.models.batch_scoring`).

The agent must never die quietly: faust ends an agent whose body raises while the process stays
up, consuming nothing. So every error has one of two outcomes. One that belongs to one record
(it does not parse, or scoring it raised) sets that record aside on the dead-letter topic with
its reason, and the rest of the batch is scored; a row of a change batch is set aside alone,
as its own per-row envelope, which ``rowcast dlq replay`` sends back to the change topic.
Anything else (the registry cannot be read, Kafka does not take the batch, e.g.
``KafkaTimeoutError`` after ``max_block_ms``) ends the process with :data:`RETRY_EXIT` before
faust can commit the batch; the supervisor in
:mod:`rowcast.streams.worker` starts a fresh worker, which scores it again from the last
committed offset.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Sequence
from typing import Any, NoReturn, Protocol

import faust
import orjson

from rowcast.connectors.dead_letters import announce
from rowcast.connectors.snapshot import DEPLOYMENT_HEADER
from rowcast.core import metrics
from rowcast.core.change_batch import ChangeBatch, is_batch
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.envelope import (
    OLD_KEY_HEADER,
    WATERMARK_HEADER,
    ChangeEvent,
    build_value,
    encode_key,
    parse_event,
)
from rowcast.core.errors import DecodeError, RetryableError
from rowcast.core.keys import json_default
from rowcast.core.label_events import LabelEvent
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import Settings
from rowcast.models.serving import SCORE_FAILED, BatchResult, Rejected, ServingSet
from rowcast.streams.memory_policy import steady_gc
from rowcast.streams.micro_batches import micro_batches

log = logging.getLogger(__name__)

RETRY_EXIT = 75  # same code as a reload: the supervisor starts a fresh worker at once
# rows scored and published together (Settings.score_chunk_rows): one change batch record of
# the source's default size
CHUNK_ROWS = 500
WHOLE_BATCH = "(batch)"  # a rejection no one deployment caused: its batch failed to score


class Message(Protocol):
    """The parts of a faust message the scorer reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class Publisher(Protocol):
    def publish(self, predictions: Any, dead_letters: Any = (), labels: Any = ()) -> int: ...


BeforeBatch = Callable[[list[ChangeEvent]], Awaitable[None] | None]
TopicOf = Callable[[str, str], str]  # (schema, table) -> change topic: Settings.source_topic
Watermark = tuple[str, int, int]  # (topic, partition, commit LSN) of a source watermark
Origin = tuple["Message", int | None]  # an event's record, and its row there if a batch


def exit_for_retry(why: str) -> NoReturn:
    """End the worker before faust can commit the batch in hand; the supervisor restarts it."""
    log.error("%s; restarting the worker to retry the batch", why)
    os._exit(RETRY_EXIT)
    raise AssertionError("unreachable")  # os._exit does not return (unless a test stubs it)


def _header(headers: object, wanted: str) -> bytes | None:
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == wanted and value is not None:
            return bytes(value)
    return None


def _only_for(headers: object) -> str | None:
    """The deployment a snapshot event is meant for (see rowcast.connectors.snapshot), if any."""
    value = _header(headers, DEPLOYMENT_HEADER)
    return None if value is None else value.decode()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class BatchScorer:
    """One batch of source records → predictions, label events and dead letters, published.

    A batch is scored and published in chunks of about ``chunk_rows`` rows (see
    :meth:`score`: the worker's memory no longer grows with the batch); ``publisher`` sends
    one chunk's records and returns only once Kafka acknowledged them. ``before_batch`` runs
    before each chunk is scored (the worker uses it to bring the deployments up to date with
    the commit times of its rows; after the first chunk of a batch it rarely has anything
    to do).

    The source's watermark records (header :data:`~rowcast.core.envelope.WATERMARK_HEADER`)
    are not changes: never scored or dead-lettered, each becomes one ``watermark`` label event
    per deployment reading its topic, published after every label event of the batch, so it
    follows every label event its partition had before it (issue 14). ``topic_of`` names a
    table's change topic; without it a topic is matched by its ``.<schema>.<table>`` ending.
    """

    def __init__(self, serving: ServingSet, publisher: Publisher,
                 before_batch: BeforeBatch | None = None, topic_of: TopicOf | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> None:
        self.serving = serving
        self.publisher = publisher
        self.before_batch = before_batch
        self.topic_of = topic_of
        self.chunk_rows = chunk_rows
        # one thread: chunks are published in order, and never two at once
        self.sender = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                            thread_name_prefix="publish")

    async def score(self, messages: Sequence[Message]) -> None:
        """Score and publish one batch; return only once Kafka acknowledged all of it.

        The batch is worked through in chunks of consecutive records of about ``chunk_rows``
        rows (:meth:`_chunks`): while a chunk is published (in ``sender``), the next one is
        scored, so at most two chunks' objects are alive at once, whatever the batch's size
        (a faust batch of 16 change batch records is 8,000 rows, ~3 kB of Python objects
        each: issue 15's worker memory). Chunks are published one at a time, in order, each
        acknowledged before the next is sent; watermarks go with the last one, after every
        label event of the batch."""
        with metrics.SCORE_BATCH_SECONDS.time():
            loop = asyncio.get_running_loop()
            marks: list[Watermark] = []
            sending: asyncio.Future[int] | None = None  # the previous chunk's publish
            scored: Counter[str] = Counter()
            for changes, dead, origins, last in self._chunks(messages, marks):
                try:
                    if self.before_batch is not None:
                        pending = self.before_batch(changes)
                        if pending is not None:
                            await pending
                except Exception as exc:  # not one record's fault: nothing may commit
                    exit_for_retry(f"cannot prepare the batch ({_error(exc)})")
                result = self._handle(changes)
                if last:
                    result.labels += self._watermarks(marks)  # after every label event
                for r in result.rejected:
                    dead.append(self._rejected(r, origins.get(id(r.event))))
                if sending is not None:
                    await self._acked(sending)
                    self._count(scored)
                scored = Counter(p.deployment for p in result.predictions
                                 if isinstance(p, PredictionRecord))
                sending = loop.run_in_executor(self.sender, self.publisher.publish,
                                               result.predictions, dead, result.labels)
                del changes, dead, origins, result  # the chunk lives on in the publish only
            if sending is not None:
                await self._acked(sending)
                self._count(scored)

    @staticmethod
    async def _acked(sending: asyncio.Future[int]) -> None:
        """Wait for one chunk's publish; a failure ends the process before faust commits."""
        try:
            await sending
        except RetryableError as exc:
            exit_for_retry(str(exc))
        except Exception as exc:  # e.g. KafkaTimeoutError from send() after max_block_ms
            exit_for_retry(f"Kafka did not take the batch ({_error(exc)})")

    @staticmethod
    def _count(scored: Counter[str]) -> None:
        for name, count in scored.items():
            metrics.SCORED.labels(name).inc(count)

    def _chunks(self, messages: Sequence[Message], marks: list[Watermark]
                ) -> Iterator[tuple[list[ChangeEvent], list[DeadLetter], dict[int, Origin],
                                    bool]]:
        """The batch's records parsed, in order, as chunks of consecutive records: a chunk
        ends once it holds ``chunk_rows`` rows or more and another change record follows (a
        change batch record is never split); the last one, flagged, at the end of the batch
        (always yielded, so a batch of watermarks alone is published too). ``marks``
        collects the watermarks as they are read, all of them by the time the last chunk is
        yielded."""
        return self._parsed(messages, marks, self.chunk_rows)

    @staticmethod
    def _parse(messages: Sequence[Message]) -> tuple[
            list[ChangeEvent], list[DeadLetter], dict[int, Origin], list[Watermark]]:
        """Records to change events: a change batch (header ``rowcast.batch``, the source's
        default) gives all its rows, a per-row envelope (``ROWCAST_SOURCE_FORMAT=debezium``,
        a real Debezium connector, snapshots and backfills) one. A record that does not
        decode is dead-lettered whole (``bad_envelope``); ``origins`` says for each event
        where it came from, so a row rejected later is dead-lettered alone."""
        marks: list[Watermark] = []
        [(changes, dead, origins, _)] = BatchScorer._parsed(messages, marks, sys.maxsize)
        return changes, dead, origins, marks

    @staticmethod
    def _parsed(messages: Sequence[Message], marks: list[Watermark], chunk_rows: int
                ) -> Iterator[tuple[list[ChangeEvent], list[DeadLetter], dict[int, Origin],
                                    bool]]:
        """:meth:`_parse` by chunks (see :meth:`_chunks`); one loop, no call per record."""
        changes: list[ChangeEvent] = []
        dead: list[DeadLetter] = []
        origins: dict[int, Origin] = {}  # id(parsed event) -> (its message, row in its batch)
        for msg in messages:
            mark = _header(msg.headers, WATERMARK_HEADER)
            if mark is not None:  # not a change: never scored nor dead-lettered
                try:
                    marks.append((msg.topic, msg.partition, int(mark)))
                except ValueError:  # a later watermark of the partition says the same
                    log.warning("ignoring a watermark that is not an LSN: %r (%s:%s@%s)",
                                mark[:40], msg.topic, msg.partition, msg.offset)
                continue
            if len(changes) >= chunk_rows:  # full, and more changes follow: the next chunk
                yield changes, dead, origins, False
                changes, dead, origins = [], [], {}
            if is_batch(msg.headers):
                try:
                    if msg.value is None:
                        raise DecodeError("a change batch without a value")
                    rows = ChangeBatch.decode(msg.value).events(
                        origin=f"{msg.topic}:{msg.partition}")
                except Exception as exc:  # DecodeError, or anything a bad batch makes raise
                    text = str(exc) if isinstance(exc, DecodeError) else _error(exc)
                    dead.append(_dead("bad_envelope", text, msg.topic, msg.partition,
                                      msg.offset, msg.key, msg.value))
                    continue
                changes += rows
                for i, event in enumerate(rows):
                    origins[id(event)] = (msg, i)
                continue
            try:
                parsed = parse_event(msg.key, msg.value, _only_for(msg.headers),
                                     f"{msg.topic}:{msg.partition}",
                                     _header(msg.headers, OLD_KEY_HEADER))
            except Exception as exc:  # DecodeError, or e.g. a malformed lsn (ValueError)
                text = str(exc) if isinstance(exc, DecodeError) else _error(exc)
                dead.append(_dead("bad_envelope", text, msg.topic, msg.partition, msg.offset,
                                  msg.key, msg.value))
                continue
            if parsed is not None:
                changes.append(parsed)
                origins[id(parsed)] = (msg, None)
        yield changes, dead, origins, True

    def _watermarks(self, marks: list[Watermark]) -> list[LabelEvent]:
        """One ``watermark`` label event per deployment reading each mark's topic, in the
        order the marks came (per partition they only grow). Every table whose topic it is
        gets it: two tables whose names differ only in characters a topic name cannot hold
        ("a b", "a_b") share one topic, and a learner not told of the other's progress would
        hold its last labels until that table changed again."""
        if not marks:
            return []
        tables: dict[str, list[tuple[str, str]]] = {}
        for schema, table in self.serving.tables():
            if self.topic_of is not None:
                tables.setdefault(self.topic_of(schema, table), []).append((schema, table))
        out: list[LabelEvent] = []
        for topic, partition, lsn in marks:
            for table in tables.get(topic) or self._tables_by_suffix(topic):
                out += self.serving.watermarks(table, f"{topic}:{partition}", lsn)
        return out

    def _tables_by_suffix(self, topic: str) -> list[tuple[str, str]]:
        if self.topic_of is not None:
            return []
        return [(schema, table) for schema, table in self.serving.tables()
                if topic.endswith(f".{schema}.{table}")]

    def _handle(self, changes: list[ChangeEvent]) -> BatchResult:
        """The serving set sets aside what one deployment fails on; should it raise anyway,
        the batch is handled event by event so the failure is pinned to its record."""
        try:
            return self.serving.handle(changes)
        except Exception as exc:
            log.warning("scoring the batch raised %s; scoring its events one by one",
                        _error(exc))
        result = BatchResult()
        for event in changes:
            try:
                one = self.serving.handle([event])
            except Exception as exc:
                result.rejected.append(Rejected(WHOLE_BATCH, event, SCORE_FAILED, _error(exc)))
                continue
            result.predictions += one.predictions
            result.labels += one.labels
            result.rejected += one.rejected
        return result

    @staticmethod
    def _rejected(r: Rejected, origin: Origin | None) -> DeadLetter:
        """A rejected row's dead letter, with a value ``rowcast dlq replay`` can send back to
        the change topic: the original record of a per-row envelope; for a row of a change
        batch, the per-row Debezium envelope of that row alone (the rest of its batch was
        scored), keyed by the row's key so it goes to the partition its batch was on."""
        error = f"{r.deployment}: {r.message}"
        msg, row = origin if origin is not None else (None, None)
        named = {"deployment": r.deployment} if r.deployment != WHOLE_BATCH else {}
        if msg is not None and row is None:
            return _dead(r.reason, error, msg.topic, msg.partition, msg.offset, msg.key,
                         msg.value, named)
        event = r.event
        if msg is not None:
            value = orjson.dumps(build_value(
                op=event.op, before=event.before, after=event.after, source=event.source,
                tx_order=event.order[2], now_us=time.time_ns() // 1000), default=json_default)
            context: dict[str, Any] = {"batch_row": row, **named}
            if event.old_key is not None:  # the per-row envelope's __debezium.oldkey header
                context["old_key"] = event.old_key
            return announce(DeadLetter("score", r.reason, error, msg.topic, msg.partition,
                                       msg.offset, encode_key(event.key or {}), value,
                                       context=context))
        payload = orjson.dumps({"after": event.after, "source": event.source.to_json()})
        return _dead(r.reason, error, None, None, None, encode_key(event.key or {}), payload,
                     named)


async def drive(batches: AsyncIterable[Sequence[Any]], scorer: BatchScorer) -> None:
    """The agent's loop: score every batch; whatever escapes ends the process (see above).

    ``batches`` yields faust events (their ``.message`` is scored) or messages.
    """
    try:
        async for events in batches:
            await scorer.score([getattr(e, "message", e) for e in events])
    except Exception as exc:
        exit_for_retry(f"the scoring agent failed ({_error(exc)})")


def attach_scorer(app: faust.App, settings: Settings, serving: ServingSet,
                  publisher: Publisher, before_batch: BeforeBatch | None = None,
                  ) -> faust.types.AgentT:
    """Register the scoring agent over the source topics of every deployed table."""
    topics = [settings.source_topic(schema, table) for schema, table in serving.tables()]
    steady_gc()  # the worker's setup is done: what it holds now lives as long as it does
    source = app.topic(*topics, key_serializer="raw", value_serializer="raw")
    scorer = BatchScorer(serving, publisher, before_batch, topic_of=settings.source_topic,
                         chunk_rows=settings.score_chunk_rows)

    @app.agent(source, concurrency=1, name="score")
    async def score(stream: faust.StreamT) -> None:
        await drive(micro_batches(stream, settings.score_batch_size,
                                  settings.score_batch_within_s), scorer)

    return score


def _dead(reason: str, error: str, topic: str | None, partition: int | None, offset: int | None,
          key: bytes | None, value: bytes | None, context: dict[str, Any] | None = None
          ) -> DeadLetter:
    return announce(DeadLetter("score", reason, error, topic, partition, offset, key, value,
                               context or {}))
