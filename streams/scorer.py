"""The scoring agent: micro-batches of change events in, predictions and dead letters out.

All decisions live in :class:`rowcast.models.serving.ServingSet`; this module only moves bytes between
faust and that pure core. Batches (``take_events``) are acked by faust after the body returns,
and the body returns only after :class:`rowcast.streams.publishing.BatchPublisher` saw Kafka acknowledge
every prediction and dead letter of the batch, so every committed offset has them on Kafka.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable

import faust
import orjson

from rowcast.connectors.dead_letters import announce
from rowcast.connectors.snapshot import DEPLOYMENT_HEADER
from rowcast.core import metrics
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.envelope import ChangeEvent, encode_key, parse_event
from rowcast.core.errors import DecodeError, RetryableError
from rowcast.core.settings import Settings
from rowcast.models.serving import ServingSet
from rowcast.streams.publishing import BatchPublisher

log = logging.getLogger(__name__)

RETRY_EXIT = 75  # same code as a reload: the supervisor starts a fresh worker at once


def _only_for(headers: object) -> str | None:
    """The deployment a snapshot event is meant for (see rowcast.connectors.snapshot), if any."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == DEPLOYMENT_HEADER and value is not None:
            return bytes(value).decode()
    return None


def attach_scorer(app: faust.App, settings: Settings, serving: ServingSet,
                  publisher: BatchPublisher,
                  before_batch: Callable[[list[ChangeEvent]], Awaitable[None] | None] | None = None,
                  ) -> faust.types.AgentT:
    """Register the scoring agent over the source topics of every deployed table.

    ``publisher`` sends each batch's predictions and dead letters and returns only once Kafka
    acknowledged them. ``before_batch`` runs before each batch is scored (the worker uses it to
    bring the deployments up to date with the batch's commit times).
    """
    topics = [settings.source_topic(schema, table) for schema, table in serving.tables()]
    source = app.topic(*topics, key_serializer="raw", value_serializer="raw")
    # one thread: batches are published in order, and never two at once
    sender = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")

    @app.agent(source, concurrency=1, name="score")
    async def score(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.score_batch_size,
                                               within=settings.score_batch_within_s):
            changes: list[ChangeEvent] = []
            dead: list[DeadLetter] = []
            originals: dict[int, object] = {}  # id(parsed event) -> its message, for dead letters
            for event in events:
                msg = event.message
                try:
                    parsed = parse_event(msg.key, msg.value, _only_for(msg.headers),
                                         f"{msg.topic}:{msg.partition}")
                except DecodeError as exc:
                    dead.append(_dead("bad_envelope", str(exc), msg.topic, msg.partition,
                                      msg.offset, msg.key, msg.value))
                    continue
                if parsed is not None:
                    changes.append(parsed)
                    originals[id(parsed)] = msg
            if before_batch is not None:
                pending = before_batch(changes)
                if pending is not None:
                    await pending
            result = serving.handle(changes)
            for r in result.rejected:
                # the original record, so `rowcast dlq replay` can send it again after a fix
                msg = originals.get(id(r.event))
                if msg is not None:
                    dead.append(_dead(r.reason, f"{r.deployment}: {r.message}", msg.topic,
                                      msg.partition, msg.offset, msg.key, msg.value))
                else:
                    payload = orjson.dumps({"after": r.event.after,
                                            "source": r.event.source.to_json()})
                    dead.append(_dead(r.reason, f"{r.deployment}: {r.message}", None, None,
                                      None, encode_key(r.event.key or {}), payload))
            try:
                with metrics.SCORE_BATCH_SECONDS.time():
                    await app.loop.run_in_executor(sender, publisher.publish,
                                                   result.predictions, dead, result.labels)
            except RetryableError as exc:
                # faust would ack this batch on the way out; exit before it can commit, so the
                # restarted worker scores the batch again from the last committed offset
                log.error("%s; restarting the worker to retry the batch", exc)
                os._exit(RETRY_EXIT)
            for name, count in Counter(p.deployment for p in result.predictions).items():
                metrics.SCORED.labels(name).inc(count)

    return score


def _dead(reason: str, error: str, topic: str | None, partition: int | None, offset: int | None,
          key: bytes | None, value: bytes | None) -> DeadLetter:
    return announce(DeadLetter("score", reason, error, topic, partition, offset, key, value))
