"""Model operations in Postgres: drift settings, challengers, promotions and model events.

The learner owns the decisions (:mod:`rowcast.models.operations`); this module only keeps what
operators ask for and what happened, as tables anyone can query with SQL:

- ``rowcast.model_operations``: per deployment, the drift detector (``adwin`` by default,
  ``page_hinkley``, ``kswin`` or ``none``) and the reaction (``none`` or ``retrain``);
- ``rowcast.challengers``: models attached in shadow to a deployment (catalog model, whether
  it may be promoted automatically, whether its predictions are kept);
- ``rowcast.model_events``: drift detections, challengers added or removed, promotions, each
  with the champion's version, the label count and the statistics or evidence behind it;
- ``rowcast.shadow_predictions``: the latest prediction of each challenger that asked for it,
  per row (never in ``rowcast.predictions`` or on the predictions topic);
- ``rowcast.model_control.promote_to``: a pending ``rowcast model promote`` (taken by the
  learner in its fenced checkpoint transaction, so every scorer switches at one version).

SQL functions give the same operations as the CLI: ``rowcast.add_challenger(deployment, name,
model, auto_promote => false, shadow_predictions => false)``, ``rowcast.remove_challenger``,
``rowcast.promote(deployment, challenger)``, ``rowcast.set_drift(deployment, detector,
reaction)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import psycopg

if TYPE_CHECKING:  # a type only: importing it loads river's drift detectors (and scipy) into
    # every process that sets up the schema, the source and the sink too
    from rowcast.models.operations import ModelEvent

DDL = """
CREATE TABLE IF NOT EXISTS rowcast.model_operations (
    deployment      text PRIMARY KEY,
    drift_detector  text NOT NULL DEFAULT 'adwin'
                    CHECK (drift_detector IN ('adwin', 'page_hinkley', 'kswin', 'none')),
    drift_reaction  text NOT NULL DEFAULT 'none' CHECK (drift_reaction IN ('none', 'retrain')),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS rowcast.challengers (
    deployment          text NOT NULL,
    name                text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    model               text NOT NULL,
    auto_promote        boolean NOT NULL DEFAULT false,
    shadow_predictions  boolean NOT NULL DEFAULT false,
    added_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (deployment, name)
);
CREATE TABLE IF NOT EXISTS rowcast.model_events (
    id          bigserial PRIMARY KEY,
    deployment  text NOT NULL,
    version     integer,
    kind        text NOT NULL,
    challenger  text,
    at_label    bigint,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS model_events_by_deployment
    ON rowcast.model_events (deployment, created_at);
CREATE TABLE IF NOT EXISTS rowcast.shadow_predictions (
    deployment  text NOT NULL,
    challenger  text NOT NULL,
    pk          jsonb NOT NULL,
    prediction  jsonb,
    score       double precision,
    at_label    bigint NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (deployment, challenger, pk)
);
ALTER TABLE rowcast.model_control ADD COLUMN IF NOT EXISTS promote_to text;

CREATE OR REPLACE FUNCTION rowcast.set_drift(p_deployment text, p_detector text DEFAULT 'adwin',
                                             p_reaction text DEFAULT 'none')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM rowcast.deployments WHERE name = p_deployment) THEN
        RAISE EXCEPTION 'no deployment named %', p_deployment USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO rowcast.model_operations (deployment, drift_detector, drift_reaction)
    VALUES (p_deployment, p_detector, p_reaction)
    ON CONFLICT (deployment) DO UPDATE SET drift_detector = EXCLUDED.drift_detector,
        drift_reaction = EXCLUDED.drift_reaction, updated_at = clock_timestamp();
END $$;

CREATE OR REPLACE FUNCTION rowcast.add_challenger(p_deployment text, p_name text, p_model text,
                                                  auto_promote boolean DEFAULT false,
                                                  shadow_predictions boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_task text;
BEGIN
    SELECT m.task INTO v_task FROM rowcast.deployments d JOIN rowcast.models m ON m.name = d.model
     WHERE d.name = p_deployment;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no deployment named %', p_deployment USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM rowcast.models WHERE name = p_model) THEN
        RAISE EXCEPTION 'unknown model %: see rowcast.models', p_model
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT task FROM rowcast.models WHERE name = p_model) <> v_task THEN
        RAISE EXCEPTION 'challenger % is a % model; deployment % needs a % model', p_model,
            (SELECT task FROM rowcast.models WHERE name = p_model), p_deployment, v_task
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rowcast.challengers (deployment, name, model, auto_promote, shadow_predictions)
    VALUES (p_deployment, p_name, p_model, auto_promote, shadow_predictions)
    ON CONFLICT (deployment, name) DO UPDATE SET model = EXCLUDED.model,
        auto_promote = EXCLUDED.auto_promote, shadow_predictions = EXCLUDED.shadow_predictions;
END $$;

CREATE OR REPLACE FUNCTION rowcast.remove_challenger(p_deployment text, p_name text)
RETURNS boolean LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM rowcast.challengers WHERE deployment = p_deployment
                  AND name = p_name RETURNING 1)
    SELECT count(*) > 0 FROM gone
$$;

CREATE OR REPLACE FUNCTION rowcast.promote(p_deployment text, p_challenger text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM rowcast.challengers WHERE deployment = p_deployment
                   AND name = p_challenger) THEN
        RAISE EXCEPTION 'deployment % has no challenger named %', p_deployment, p_challenger
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO rowcast.model_control (deployment, promote_to) VALUES (p_deployment, p_challenger)
    ON CONFLICT (deployment) DO UPDATE SET promote_to = EXCLUDED.promote_to;
END $$;
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


@dataclass(frozen=True)
class ChallengerSpec:
    name: str
    model: str
    auto_promote: bool
    shadow_predictions: bool


@dataclass(frozen=True)
class OperationsConfig:
    """What operators asked for a deployment (defaults: ADWIN, no reaction, no challengers)."""

    detector: str = "adwin"
    reaction: str = "none"
    challengers: tuple[ChallengerSpec, ...] = ()


def read_config(conn: psycopg.Connection, deployment: str) -> OperationsConfig:
    row = conn.execute("SELECT drift_detector, drift_reaction FROM rowcast.model_operations "
                       "WHERE deployment = %s", (deployment,)).fetchone()
    challengers = tuple(ChallengerSpec(*r) for r in conn.execute(
        "SELECT name, model, auto_promote, shadow_predictions FROM rowcast.challengers "
        "WHERE deployment = %s ORDER BY name", (deployment,)))
    if row is None:
        return OperationsConfig(challengers=challengers)
    return OperationsConfig(row[0], row[1], challengers)


def record_events(conn: psycopg.Connection, deployment: str, version: int | None,
                  events: Iterable[ModelEvent]) -> int:
    rows = [(deployment, version, e.kind, e.challenger, e.at_label, orjson.dumps(e.detail).decode())
            for e in events]
    if rows:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO rowcast.model_events (deployment, version, kind, "
                            "challenger, at_label, detail) VALUES (%s, %s, %s, %s, %s, %s)", rows)
    return len(rows)


def take_promotion(conn: psycopg.Connection, deployment: str) -> str | None:
    """The challenger a pending ``rowcast model promote`` names, cleared (call inside the
    checkpoint's transaction: a rolled-back checkpoint leaves the request pending)."""
    row = conn.execute("UPDATE rowcast.model_control c SET promote_to = NULL FROM "
                       "(SELECT promote_to FROM rowcast.model_control WHERE deployment = %s "
                       "AND promote_to IS NOT NULL FOR UPDATE) old WHERE c.deployment = %s "
                       "RETURNING old.promote_to", (deployment, deployment)).fetchone()
    return None if row is None else row[0]


def promotion_pending(conn: psycopg.Connection, deployment: str) -> bool:
    row = conn.execute("SELECT promote_to IS NOT NULL FROM rowcast.model_control "
                       "WHERE deployment = %s", (deployment,)).fetchone()
    return bool(row and row[0])


def swap_roles(conn: psycopg.Connection, deployment: str, promoted: str, old_name: str,
               old_model: str) -> None:
    """After a promotion the old champion stays as a challenger under ``old_name`` (promoting
    it back is a rollback across the switch); the promoted one is no longer a challenger."""
    conn.execute("DELETE FROM rowcast.challengers WHERE deployment = %s AND name = %s",
                 (deployment, promoted))
    conn.execute("INSERT INTO rowcast.challengers (deployment, name, model) VALUES (%s, %s, %s) "
                 "ON CONFLICT (deployment, name) DO UPDATE SET model = EXCLUDED.model",
                 (deployment, old_name, old_model))


def restore_roles(conn: psycopg.Connection, deployment: str,
                  challengers: Iterable[tuple[str, str, bool]]) -> None:
    """After a rollback: the challengers of the restored version, (name, model, shadow
    predictions), none auto-promoting, replace the deployment's (call inside the checkpoint's
    transaction)."""
    conn.execute("DELETE FROM rowcast.challengers WHERE deployment = %s", (deployment,))
    rows = [(deployment, n, m, s) for n, m, s in challengers]
    if rows:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO rowcast.challengers (deployment, name, model, "
                            "auto_promote, shadow_predictions) VALUES (%s, %s, %s, false, %s)",
                            rows)


def write_shadow(conn: psycopg.Connection, deployment: str,
                 rows: Iterable[tuple[str, bytes, object, float | None, int]]) -> None:
    """(challenger, stored key JSON, prediction, score, at_label) rows, upserted."""
    data = [(deployment, c, k.decode(), orjson.dumps(p).decode(), s, n) for c, k, p, s, n in rows]
    if data:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rowcast.shadow_predictions (deployment, challenger, pk, prediction, "
                "score, at_label) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (deployment, "
                "challenger, pk) DO UPDATE SET prediction = EXCLUDED.prediction, score = "
                "EXCLUDED.score, at_label = EXCLUDED.at_label, written_at = clock_timestamp()",
                data)


def recent_events(conn: psycopg.Connection, deployment: str | None = None, limit: int = 20
                  ) -> list[tuple]:
    """Newest first: (deployment, version, kind, challenger, at_label, detail, created_at)."""
    return conn.execute(
        "SELECT deployment, version, kind, challenger, at_label, detail, created_at FROM "
        "rowcast.model_events WHERE %(d)s::text IS NULL OR deployment = %(d)s "
        "ORDER BY id DESC LIMIT %(n)s", {"d": deployment, "n": limit}).fetchall()
