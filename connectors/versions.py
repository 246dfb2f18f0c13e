"""Model versions in Postgres: checkpoints that commit model, metrics and position together.

``rowcast.model_versions`` holds one row per checkpoint: the signed snapshot (bytea), the
samples learned, the running metrics, the learner's resume state and the labels-topic offset
to resume from. Everything is written in one transaction with the pending features
(``rowcast.pending_labels``), the labels held until their features come
(``rowcast.held_labels``) and the rows learned already (``rowcast.learned_labels``, what makes
"each row learned at most once" hold across restarts; all three in
:mod:`rowcast.connectors.pending_labels`), so after a kill -9 at any moment the
learner restores a state that is consistent with its offset: replaying from there learns each
label exactly once.

History is bounded and its length costs nothing per checkpoint: ``model_control.latest_version``
points at each deployment's newest version (what ``rowcast.model_metrics`` and :func:`latest`
read), old snapshots are found through a partial index, and :func:`write` thins old versions
incrementally by the policy at :data:`KEEP_ALL_S`. ``model_control`` also records why a
deployment's learning is paused (:func:`pause`), for status and for the next owner.

``rowcast.model_control`` fences learners (a learner that lost its partition cannot write:
each claim bumps ``epoch``, and every checkpoint checks it under a row lock), records the pin
(what scorers serve) and carries rollback requests to the learner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from rowcast.core.errors import ConfigError

DDL = """
CREATE TABLE IF NOT EXISTS rowcast.model_versions (
    deployment     text NOT NULL,
    version        integer NOT NULL,
    generation     text NOT NULL,
    model          text NOT NULL,
    snapshot       bytea,
    samples        bigint NOT NULL,
    metrics        jsonb NOT NULL,
    state          jsonb NOT NULL,
    labels_offset  bigint NOT NULL,
    note           text,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (deployment, version)
);
CREATE TABLE IF NOT EXISTS rowcast.model_control (
    deployment      text PRIMARY KEY,
    epoch           bigint NOT NULL DEFAULT 0,
    pinned_version  integer,
    rollback_to     integer
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'rowcast.model_control'::regclass
                   AND attname = 'guard_to_offset' AND NOT attisdropped) THEN
        ALTER TABLE rowcast.model_control
            ADD COLUMN IF NOT EXISTS latest_version integer,
            ADD COLUMN IF NOT EXISTS thinned_hourly_to timestamptz,
            ADD COLUMN IF NOT EXISTS thinned_daily_to timestamptz,
            ADD COLUMN IF NOT EXISTS paused_reason text,
            ADD COLUMN IF NOT EXISTS paused_error text,
            ADD COLUMN IF NOT EXISTS paused_at timestamptz,
            ADD COLUMN IF NOT EXISTS paused_generation text,
            ADD COLUMN IF NOT EXISTS guard_to_offset bigint;
        UPDATE rowcast.model_control c SET latest_version = (
            SELECT max(version) FROM rowcast.model_versions v WHERE v.deployment = c.deployment);
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS model_versions_created_at
    ON rowcast.model_versions (deployment, created_at);
CREATE INDEX IF NOT EXISTS model_versions_with_snapshot
    ON rowcast.model_versions (deployment, version) WHERE snapshot IS NOT NULL;
CREATE OR REPLACE VIEW rowcast.model_metrics AS
SELECT v.deployment, v.version, v.samples, v.metrics, v.created_at
  FROM rowcast.model_control c JOIN rowcast.model_versions v
    ON v.deployment = c.deployment AND v.version = c.latest_version;
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


class Fenced(Exception):
    """Another learner claimed the deployment (or it was removed or redeployed): stop writing."""


class Redeployed(Fenced):
    """The checkpoint's generation is gone (the deployment was redeployed or removed), but no
    other learner claimed it: the owner may go on with the registry's current generation."""


@dataclass(frozen=True)
class Checkpoint:
    deployment: str
    version: int
    generation: str
    model: str
    snapshot: bytes | None
    samples: int
    metrics: dict[str, Any]
    state: dict[str, Any]
    labels_offset: int
    note: str | None = None
    created_at: datetime | None = None


def claim(conn: psycopg.Connection, deployment: str) -> int:
    """Become the deployment's only learner; returns the epoch every checkpoint must show."""
    return conn.execute(
        "INSERT INTO rowcast.model_control (deployment, epoch) VALUES (%s, 1) "
        "ON CONFLICT (deployment) DO UPDATE SET epoch = rowcast.model_control.epoch + 1 "
        "RETURNING epoch", (deployment,)).fetchone()[0]


_FIELDS = ("deployment, version, generation, model, snapshot, samples, metrics, state, "
           "labels_offset, note, created_at")
_V_FIELDS = ", ".join(f"v.{f.strip()}" for f in _FIELDS.split(","))


def _checkpoint(row: tuple) -> Checkpoint:
    return Checkpoint(row[0], row[1], row[2], row[3], None if row[4] is None else bytes(row[4]),
                      row[5], row[6], row[7], row[8], row[9], row[10])


def latest(conn: psycopg.Connection, deployment: str, generation: str) -> Checkpoint | None:
    """The newest checkpoint of this generation (the one a restarted learner resumes from)."""
    row = conn.execute(  # the pointer, not a scan: the latest version of the deployment
        f"SELECT {_V_FIELDS} FROM rowcast.model_control c JOIN rowcast.model_versions v "
        "ON v.deployment = c.deployment AND v.version = c.latest_version "
        "WHERE c.deployment = %s AND v.generation = %s", (deployment, generation)).fetchone()
    return None if row is None else _checkpoint(row)


def get(conn: psycopg.Connection, deployment: str, version: int) -> Checkpoint:
    row = conn.execute(f"SELECT {_FIELDS} FROM rowcast.model_versions "
                       "WHERE deployment = %s AND version = %s", (deployment, version)).fetchone()
    if row is None:
        raise ConfigError(f"{deployment!r} has no model version {version} "
                          f"(rowcast model versions {deployment} lists them)")
    return _checkpoint(row)


def history(conn: psycopg.Connection, deployment: str, limit: int = 50) -> list[Checkpoint]:
    """Newest first, without snapshots (they can be large)."""
    rows = conn.execute(
        f"SELECT {_FIELDS.replace('snapshot', 'NULL')} FROM rowcast.model_versions "
        "WHERE deployment = %s ORDER BY version DESC LIMIT %s", (deployment, limit)).fetchall()
    return [_checkpoint(r) for r in rows]


@dataclass(frozen=True)
class Control:
    epoch: int
    pinned_version: int | None
    rollback_to: int | None
    paused_reason: str | None = None


def lock_control(conn: psycopg.Connection, deployment: str, epoch: int,
                 generation: str) -> Control:
    """Inside a checkpoint's transaction: lock the control row, refuse a stale learner."""
    row = conn.execute("SELECT epoch, pinned_version, rollback_to, paused_reason "
                       "FROM rowcast.model_control WHERE deployment = %s FOR UPDATE",
                       (deployment,)).fetchone()
    if row is None or row[0] != epoch:
        raise Fenced(f"learner of {deployment!r} was superseded (epoch {epoch})")
    alive = conn.execute(
        "SELECT 1 FROM rowcast.deployments WHERE name = %s AND "
        "(extract(epoch FROM created_at) * 1000000)::bigint || '.' || version = %s",
        (deployment, generation)).fetchone()
    if alive is None:
        raise Redeployed(f"deployment {deployment!r} generation {generation} is gone")
    return Control(*row)


# History thinning (each checkpoint, in its transaction): every version of the last
# KEEP_ALL_S stays; older ones are thinned to the first version of each hour, and those older
# than HOURLY_FOR_S to the first of each day. Never thinned: the latest version, the pinned one,
# a requested rollback target and versions that still have their snapshot. Each checkpoint
# looks only at versions that crossed an age boundary since the last one (a watermark per
# tier in rowcast.model_control), at most THIN_BATCH per tier, so its cost does not grow with
# the history, and a learner that was down catches up over a few checkpoints. The batch's
# versions to delete are one array (an index lookup each, whatever the planner guesses): a
# join of the batch with the deployment's versions was planned, on stale statistics, as a loop
# over every version running the first-of-bucket lookup per pair (10-48 s a checkpoint).
KEEP_ALL_S = 86400.0
HOURLY_FOR_S = 30 * 86400.0
THIN_BATCH = 1000

_THIN = """
WITH c AS (SELECT pinned_version, rollback_to, thinned_hourly_to, thinned_daily_to
             FROM rowcast.model_control WHERE deployment = %(d)s),
batch AS (
    SELECT v.version, v.created_at, v.snapshot IS NULL AS bare,
           v.version = (SELECT e.version FROM rowcast.model_versions e  -- first of its bucket
                         WHERE e.deployment = %(d)s
                           AND e.created_at >= date_trunc(%(unit)s, v.created_at)
                         ORDER BY e.created_at LIMIT 1) AS first
      FROM rowcast.model_versions v
     WHERE v.deployment = %(d)s
       AND v.created_at > coalesce((SELECT {mark} FROM c), '-infinity')
       AND v.created_at <= {upto}
     ORDER BY v.created_at LIMIT %(batch)s),
gone AS (
    DELETE FROM rowcast.model_versions v
     WHERE v.deployment = %(d)s
       AND v.version = ANY (ARRAY(SELECT b.version FROM batch b WHERE b.bare AND NOT b.first))
       AND v.version <> %(latest)s
       AND v.version IS DISTINCT FROM (SELECT pinned_version FROM c)
       AND v.version IS DISTINCT FROM (SELECT rollback_to FROM c)
    RETURNING 1)
UPDATE rowcast.model_control SET {mark} = coalesce((SELECT max(created_at) FROM batch), {mark})
 WHERE deployment = %(d)s
RETURNING (SELECT count(*) FROM gone)
"""
_THIN_HOURLY = _THIN.format(mark="thinned_hourly_to",
                            upto="now() - make_interval(secs => %(age)s)")
# the daily tier trails the hourly one, so it never sees a version the hourly tier has not
_THIN_DAILY = _THIN.format(mark="thinned_daily_to",
                           upto="least(now() - make_interval(secs => %(age)s), "
                                "(SELECT thinned_hourly_to FROM c))")


def write(conn: psycopg.Connection, ck: Checkpoint, keep_snapshots: int) -> int:
    """Store a checkpoint as the next version (call inside the transaction that locked control).

    Costs the same whatever the history's length: the next number and the latest-version
    pointer are index lookups, old snapshots are found through a partial index of the rows
    that still have one, and history is thinned incrementally (:data:`KEEP_ALL_S`)."""
    # a few index lookups: JIT compiling them (the planner's guess on a long history) would
    # cost a second or more
    conn.execute("SET LOCAL jit = off")
    version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM rowcast.model_versions "
                           "WHERE deployment = %s", (ck.deployment,)).fetchone()[0]
    conn.execute(
        "INSERT INTO rowcast.model_versions (deployment, version, generation, model, snapshot, "
        "samples, metrics, state, labels_offset, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
        "%s, %s)",
        (ck.deployment, version, ck.generation, ck.model, ck.snapshot, ck.samples,
         orjson.dumps(ck.metrics).decode(), orjson.dumps(ck.state).decode(), ck.labels_offset,
         ck.note))
    conn.execute("INSERT INTO rowcast.model_control (deployment, latest_version) VALUES (%s, %s) "
                 "ON CONFLICT (deployment) DO UPDATE SET latest_version = EXCLUDED.latest_version",
                 (ck.deployment, version))
    # old snapshots go, except a pinned one (only rows with a snapshot are visited)
    conn.execute(
        "UPDATE rowcast.model_versions v SET snapshot = NULL WHERE deployment = %s "
        "AND version <= %s AND snapshot IS NOT NULL AND version IS DISTINCT FROM "
        "(SELECT pinned_version FROM rowcast.model_control WHERE deployment = %s)",
        (ck.deployment, version - keep_snapshots, ck.deployment))
    thin(conn, ck.deployment, version)
    return version


def advance(conn: psycopg.Connection, deployment: str, version: int, state: dict[str, Any],
            labels_offset: int) -> None:
    """Move the latest version's resume state and offset forward in place (call inside the
    transaction that locked control): the learner consumed only positions (watermarks, events
    still waiting for them), so model, metrics and pending labels are those of ``version`` and
    a new version would add nothing but a row."""
    conn.execute("UPDATE rowcast.model_versions SET state = %s, labels_offset = %s "
                 "WHERE deployment = %s AND version = %s",
                 (orjson.dumps(state).decode(), labels_offset, deployment, version))


def thin(conn: psycopg.Connection, deployment: str, latest_version: int) -> int:
    """One bounded step of the history policy (:data:`KEEP_ALL_S`); returns the versions
    deleted."""
    gone = 0
    for statement, age, unit in ((_THIN_HOURLY, KEEP_ALL_S, "hour"),
                                 (_THIN_DAILY, HOURLY_FOR_S, "day")):
        row = conn.execute(statement, {"d": deployment, "age": age, "unit": unit,
                                       "batch": THIN_BATCH, "latest": latest_version}).fetchone()
        gone += row[0] if row else 0
    return gone


def rollback_target(conn: psycopg.Connection, deployment: str) -> int | None:
    """The version a pending ``rowcast model rollback`` asks for, if any."""
    row = conn.execute("SELECT rollback_to FROM rowcast.model_control WHERE deployment = %s",
                       (deployment,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class Pause:
    """Why a deployment's learner stopped learning (``rowcast status`` shows it)."""

    reason: str  # non_finite | bad_snapshot
    error: str
    since: datetime
    generation: str


def pause(conn: psycopg.Connection, deployment: str, generation: str, reason: str, error: str,
          guard_to_offset: int | None = None) -> None:
    """Record that learning of ``deployment`` is paused and why, until a rollback (or a
    redeploy). ``guard_to_offset``: labels below it are replayed guarded after the rollback
    (each row checked, one that breaks the model again refused)."""
    conn.execute(
        "INSERT INTO rowcast.model_control (deployment, paused_reason, paused_error, paused_at, "
        "paused_generation, guard_to_offset) VALUES (%s, %s, %s, now(), %s, %s) "
        "ON CONFLICT (deployment) DO UPDATE SET paused_reason = EXCLUDED.paused_reason, "
        "paused_error = EXCLUDED.paused_error, paused_at = EXCLUDED.paused_at, "
        "paused_generation = EXCLUDED.paused_generation, guard_to_offset = "
        "greatest(rowcast.model_control.guard_to_offset, EXCLUDED.guard_to_offset)",
        (deployment, reason, error, generation, guard_to_offset))


def clear_pause(conn: psycopg.Connection, deployment: str) -> None:
    conn.execute("UPDATE rowcast.model_control SET paused_reason = NULL, paused_error = NULL, "
                 "paused_at = NULL, paused_generation = NULL WHERE deployment = %s",
                 (deployment,))


def paused(conn: psycopg.Connection, deployment: str | None = None) -> dict[str, Pause]:
    """Paused deployments (all, or the one named) by name."""
    rows = conn.execute(
        "SELECT deployment, paused_reason, paused_error, paused_at, paused_generation "
        "FROM rowcast.model_control WHERE paused_reason IS NOT NULL "
        "AND (%s::text IS NULL OR deployment = %s)", (deployment, deployment)).fetchall()
    return {r[0]: Pause(*r[1:]) for r in rows}


def guard_to(conn: psycopg.Connection, deployment: str) -> int:
    """Labels offset below which the learner applies labels guarded (see :func:`pause`)."""
    row = conn.execute("SELECT guard_to_offset FROM rowcast.model_control WHERE deployment = %s",
                       (deployment,)).fetchone()
    return (row[0] if row else None) or 0


def clear_rollback(conn: psycopg.Connection, deployment: str) -> None:
    conn.execute("UPDATE rowcast.model_control SET rollback_to = NULL WHERE deployment = %s",
                 (deployment,))


# rollback target meaning the model as deployed, before any label: the way out for a model that
# broke before its first version was written
FRESH = 0


def request_rollback(conn: psycopg.Connection, deployment: str,
                     version: int) -> Checkpoint | None:
    """Ask the learner to continue from ``version``'s model and metrics (it applies the request
    at its next checkpoint, as a new version, so versions keep moving forward). Version
    :data:`FRESH` (0) starts again from the model as deployed, its metrics empty; it returns
    None, having no checkpoint (callers check that the deployment exists).

    Under the control row's lock, taken first: a checkpoint thins old snapshots under it, so
    one in progress is waited for, and the target checked after it (checked before, a
    request could name a version whose snapshot the checkpoint was removing)."""
    with conn.transaction():
        conn.execute("SELECT 1 FROM rowcast.model_control WHERE deployment = %s FOR UPDATE",
                     (deployment,))
        ck = None if version == FRESH else get(conn, deployment, version)
        if ck is not None and ck.snapshot is None:
            raise ConfigError(f"version {version} of {deployment!r} has no snapshot any more "
                              "(only the newest are kept: ROWCAST_MODEL_VERSIONS_KEEP)")
        conn.execute("INSERT INTO rowcast.model_control (deployment, rollback_to) VALUES (%s, "
                     "%s) ON CONFLICT (deployment) DO UPDATE SET rollback_to = "
                     "EXCLUDED.rollback_to", (deployment, version))
    return ck


def set_pin(conn: psycopg.Connection, deployment: str, version: int | None) -> Checkpoint | None:
    """Record the pinned version (None unpins); returns the pinned checkpoint with snapshot."""
    ck = None
    if version is not None:
        ck = get(conn, deployment, version)
        if ck.snapshot is None:
            raise ConfigError(f"version {version} of {deployment!r} has no snapshot any more")
    conn.execute("INSERT INTO rowcast.model_control (deployment, pinned_version) VALUES (%s, %s) "
                 "ON CONFLICT (deployment) DO UPDATE SET pinned_version = EXCLUDED.pinned_version",
                 (deployment, version))
    return ck


def pinned(conn: psycopg.Connection, deployment: str) -> int | None:
    row = conn.execute("SELECT pinned_version FROM rowcast.model_control WHERE deployment = %s",
                       (deployment,)).fetchone()
    return None if row is None else row[0]
