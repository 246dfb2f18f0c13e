"""The scoring agent: micro-batches of change events in, predictions and dead letters out.

All decisions live in :class:`models.serving.ServingSet`; this module only moves bytes between
faust and that pure core. Batches (``take_events``) are acked by faust after the body returns,
and faust flushes the producer before committing, so every committed offset has its
predictions on Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import faust
import orjson

from connectors.dead_letters import dead_letter
from connectors.envelope import ChangeEvent, parse_event
from connectors.snapshot import DEPLOYMENT_HEADER
from models.serving import ServingSet
from rowcast.errors import DecodeError
from rowcast.settings import Settings

log = logging.getLogger(__name__)


def _only_for(headers: object) -> str | None:
    """The deployment a snapshot event is meant for (see connectors.snapshot), if any."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    for name, value in items:
        if name == DEPLOYMENT_HEADER and value is not None:
            return bytes(value).decode()
    return None


def attach_scorer(app: faust.App, settings: Settings, serving: ServingSet,
                  before_batch: Callable[[list[ChangeEvent]], Awaitable[None] | None] | None = None,
                  ) -> faust.types.AgentT:
    """Register the scoring agent over the source topics of every deployed table.

    ``before_batch`` runs before each batch is scored (the worker uses it to bring the
    deployments up to date with the batch's commit times).
    """
    topics = [settings.source_topic(schema, table) for schema, table in serving.tables()]
    source = app.topic(*topics, key_serializer="raw", value_serializer="raw")

    async def dead(stage: str, reason: str, error: str, event: faust.types.EventT | None,
                   key: bytes | None = None, value: bytes | None = None) -> None:
        msg = event.message if event is not None else None
        record = dead_letter(stage=stage, reason=reason, error=error,
                             topic=msg.topic if msg else None,
                             partition=msg.partition if msg else None,
                             offset=msg.offset if msg else None,
                             key=msg.key if msg else key, value=msg.value if msg else value)
        log.warning("dead letter from %s: %s (%s)", stage, reason, error)
        await app.producer.send(settings.dlq_topic, record["stage"].encode(),
                                orjson.dumps(record), None, None, None)

    @app.agent(source, concurrency=1, name="score")
    async def score(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.score_batch_size,
                                               within=settings.score_batch_within_s):
            changes: list[ChangeEvent] = []
            for event in events:
                try:
                    parsed = parse_event(event.message.key, event.message.value,
                                         _only_for(event.message.headers))
                except DecodeError as exc:
                    await dead("score", "bad_envelope", str(exc), event)
                    continue
                if parsed is not None:
                    changes.append(parsed)
            if before_batch is not None:
                pending = before_batch(changes)
                if pending is not None:
                    await pending
            result = serving.handle(changes)
            for p in result.predictions:
                await app.producer.send(settings.predictions_topic(p.deployment), p.key_bytes(),
                                        p.to_json(), None, None, None)
            for r in result.rejected:
                payload = orjson.dumps({"after": r.event.after, "source": r.event.source.to_json()})
                await dead("score", r.reason, r.message, None, orjson.dumps(r.event.key), payload)

    return score
