"""The scoring agent: micro-batches of change events in, predictions and dead letters out.

All decisions live in :class:`rowcast.models.serving.ServingSet`; this module only moves bytes between
faust and that pure core. Batches (``take_events``) are acked by faust after the body returns,
and the body returns only after :class:`rowcast.streams.publishing.BatchPublisher` saw Kafka acknowledge
every prediction and dead letter of the batch, so every committed offset has them on Kafka.

The agent must never die quietly: faust ends an agent whose body raises while the process stays
up, consuming nothing. So every error has one of two outcomes. One that belongs to one record
(it does not parse, or scoring it raised) sets that record aside on the dead-letter topic with
its reason, and the rest of the batch is scored. Anything else (the registry cannot be read,
Kafka does not take the batch, e.g. ``KafkaTimeoutError`` after ``max_block_ms``) ends the
process with :data:`RETRY_EXIT` before faust can commit the batch; the supervisor in
:mod:`rowcast.streams.worker` starts a fresh worker, which scores it again from the last
committed offset.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol

import faust
import orjson

from rowcast.connectors.dead_letters import announce
from rowcast.connectors.snapshot import DEPLOYMENT_HEADER
from rowcast.core import metrics
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.envelope import (
    OLD_KEY_HEADER,
    WATERMARK_HEADER,
    ChangeEvent,
    encode_key,
    parse_event,
)
from rowcast.core.errors import DecodeError, RetryableError
from rowcast.core.label_events import LabelEvent
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import Settings
from rowcast.models.serving import SCORE_FAILED, BatchResult, Rejected, ServingSet

log = logging.getLogger(__name__)

RETRY_EXIT = 75  # same code as a reload: the supervisor starts a fresh worker at once


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

    ``publisher`` sends each batch's records and returns only once Kafka acknowledged them.
    ``before_batch`` runs before each batch is scored (the worker uses it to bring the
    deployments up to date with the batch's commit times).

    The source's watermark records (header :data:`~rowcast.core.envelope.WATERMARK_HEADER`)
    are not changes: never scored or dead-lettered, each becomes one ``watermark`` label event
    per deployment reading its topic, published after every label event of the batch, so it
    follows every label event its partition had before it (issue 14). ``topic_of`` names a
    table's change topic; without it a topic is matched by its ``.<schema>.<table>`` ending.
    """

    def __init__(self, serving: ServingSet, publisher: Publisher,
                 before_batch: BeforeBatch | None = None, topic_of: TopicOf | None = None
                 ) -> None:
        self.serving = serving
        self.publisher = publisher
        self.before_batch = before_batch
        self.topic_of = topic_of
        # one thread: batches are published in order, and never two at once
        self.sender = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                            thread_name_prefix="publish")

    async def score(self, messages: Sequence[Message]) -> None:
        changes, dead, originals, marks = self._parse(messages)
        try:
            if self.before_batch is not None:
                pending = self.before_batch(changes)
                if pending is not None:
                    await pending
        except Exception as exc:  # not one record's fault: nothing of this batch may commit
            exit_for_retry(f"cannot prepare the batch ({_error(exc)})")
        result = self._handle(changes)
        result.labels += self._watermarks(marks)  # after every label event of the batch
        for r in result.rejected:
            dead.append(self._rejected(r, originals.get(id(r.event))))
        try:
            with metrics.SCORE_BATCH_SECONDS.time():
                await asyncio.get_running_loop().run_in_executor(
                    self.sender, self.publisher.publish, result.predictions, dead, result.labels)
        except RetryableError as exc:
            exit_for_retry(str(exc))
        except Exception as exc:  # e.g. KafkaTimeoutError from send() after max_block_ms
            exit_for_retry(f"Kafka did not take the batch ({_error(exc)})")
        for name, count in Counter(p.deployment for p in result.predictions
                                   if isinstance(p, PredictionRecord)).items():
            metrics.SCORED.labels(name).inc(count)

    @staticmethod
    def _parse(messages: Sequence[Message]) -> tuple[
            list[ChangeEvent], list[DeadLetter], dict[int, Message], list[Watermark]]:
        changes: list[ChangeEvent] = []
        dead: list[DeadLetter] = []
        originals: dict[int, Message] = {}  # id(parsed event) -> its message, for dead letters
        marks: list[Watermark] = []
        for msg in messages:
            mark = _header(msg.headers, WATERMARK_HEADER)
            if mark is not None:  # not a change: never scored nor dead-lettered
                try:
                    marks.append((msg.topic, msg.partition, int(mark)))
                except ValueError:  # a later watermark of the partition says the same
                    log.warning("ignoring a watermark that is not an LSN: %r (%s:%s@%s)",
                                mark[:40], msg.topic, msg.partition, msg.offset)
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
                originals[id(parsed)] = msg
        return changes, dead, originals, marks

    def _watermarks(self, marks: list[Watermark]) -> list[LabelEvent]:
        """One ``watermark`` label event per deployment reading each mark's topic, in the
        order the marks came (per partition they only grow)."""
        if not marks:
            return []
        tables: dict[str, tuple[str, str]] = {}
        for schema, table in self.serving.tables():
            if self.topic_of is not None:
                tables[self.topic_of(schema, table)] = (schema, table)
        out: list[LabelEvent] = []
        for topic, partition, lsn in marks:
            table = tables.get(topic) or self._table_by_suffix(topic)
            if table is not None:
                out += self.serving.watermarks(table, f"{topic}:{partition}", lsn)
        return out

    def _table_by_suffix(self, topic: str) -> tuple[str, str] | None:
        if self.topic_of is not None:
            return None
        for schema, table in self.serving.tables():
            if topic.endswith(f".{schema}.{table}"):
                return schema, table
        return None

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
                result.rejected.append(Rejected("(batch)", event, SCORE_FAILED, _error(exc)))
                continue
            result.predictions += one.predictions
            result.labels += one.labels
            result.rejected += one.rejected
        return result

    @staticmethod
    def _rejected(r: Rejected, msg: Message | None) -> DeadLetter:
        # the original record, so `rowcast dlq replay` can send it again after a fix
        if msg is not None:
            return _dead(r.reason, f"{r.deployment}: {r.message}", msg.topic, msg.partition,
                         msg.offset, msg.key, msg.value)
        payload = orjson.dumps({"after": r.event.after, "source": r.event.source.to_json()})
        return _dead(r.reason, f"{r.deployment}: {r.message}", None, None, None,
                     encode_key(r.event.key or {}), payload)


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
    source = app.topic(*topics, key_serializer="raw", value_serializer="raw")
    scorer = BatchScorer(serving, publisher, before_batch, topic_of=settings.source_topic)

    @app.agent(source, concurrency=1, name="score")
    async def score(stream: faust.StreamT) -> None:
        await drive(stream.take_events(settings.score_batch_size,
                                       within=settings.score_batch_within_s), scorer)

    return score


def _dead(reason: str, error: str, topic: str | None, partition: int | None, offset: int | None,
          key: bytes | None, value: bytes | None) -> DeadLetter:
    return announce(DeadLetter("score", reason, error, topic, partition, offset, key, value))
