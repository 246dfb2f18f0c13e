"""Replays you can audit: a deployment's rows scored again with one chosen model version.

``rowcast backfill NAME --version V`` answers "what would version V have said about these
rows?" without touching what is served or learned: the rows are read with the same text
encoding as the stream (:func:`rowcast.connectors.snapshot.read_rows`), scored here with V's
verified snapshot, and written to ``rowcast.replay_predictions`` tagged with a replay id and
the version. Nothing goes to Kafka, so no scorer serves them, no sink overwrites the live
predictions with them and no learner learns from them. The replay is a model event (kind
``replay``, with its id, version and row counts).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import orjson
import psycopg

from rowcast.connectors import operations, versions
from rowcast.connectors.registry import list_deployments
from rowcast.connectors.snapshot import read_rows
from rowcast.core.errors import ConfigError
from rowcast.core.keys import stored_key
from rowcast.core.settings import Settings
from rowcast.models.catalog import get_model
from rowcast.models.features import FeatureError
from rowcast.models.operations import ModelEvent
from rowcast.models.scoring import OnlineModel
from rowcast.models.snapshot import load_snapshot, signing_key

DDL = """
CREATE TABLE IF NOT EXISTS rowcast.replay_predictions (
    replay_id    uuid NOT NULL,
    deployment   text NOT NULL,
    version      integer NOT NULL,
    pk           jsonb NOT NULL,
    prediction   jsonb,
    score        double precision,
    replayed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (replay_id, pk)
);
CREATE INDEX IF NOT EXISTS replay_predictions_by_deployment
    ON rowcast.replay_predictions (deployment, version);
"""


@dataclass(frozen=True)
class Replay:
    replay_id: str
    deployment: str
    version: int
    rows: int
    failed: int  # rows the model could not score (bad feature values): counted, not written


def replay_version(conn: psycopg.Connection, settings: Settings, name: str, version: int,
                   chunk: int = 5000) -> Replay:
    found = [d for d in list_deployments(conn) if d.name == name]
    if not found:
        raise ConfigError(f"no deployment named {name!r} (rowcast deployments lists them)")
    d = found[0]
    ck = versions.get(conn, name, version)
    if ck.snapshot is None:
        raise ConfigError(f"version {version} of {name!r} kept no snapshot (thinned history); "
                          f"`rowcast model versions {name}` lists the versions you can replay")
    payload = load_snapshot(ck.snapshot, signing_key(settings))
    estimator = payload["estimator"] if isinstance(payload, dict) else payload
    model = OnlineModel(dataclasses.replace(d, model=ck.model), get_model(ck.model), estimator,
                        version)
    conn.execute(DDL)
    replay_id, rows, failed = str(uuid.uuid4()), 0, 0
    buffered: list[tuple] = []

    def flush() -> None:  # between the cursor's fetches: one statement at a time on conn
        with conn.cursor().copy("COPY rowcast.replay_predictions (replay_id, deployment, "
                                "version, pk, prediction, score) FROM STDIN") as copy:
            for row in buffered:
                copy.write_row(row)
        buffered.clear()

    with conn.transaction():
        for after in read_rows(conn, d.schema, d.table, chunk):
            try:
                scored = model.score(model.features(after))
            except (FeatureError, ValueError, TypeError, ArithmeticError):
                failed += 1
                continue
            buffered.append((replay_id, name, version,
                             stored_key({k: after[k] for k in d.key_columns}),
                             orjson.dumps(scored.prediction).decode(), scored.score))
            rows += 1
            if len(buffered) >= chunk:
                flush()
        flush()
        operations.record_events(conn, name, version, [ModelEvent(
            "replay", ck.samples, None, {"replay_id": replay_id, "version": version,
                                         "rows": rows, "failed": failed})])
    return Replay(replay_id, name, version, rows, failed)
