"""Model versions in Postgres: checkpoints that commit model, metrics and position together.

``rowcast.model_versions`` holds one row per checkpoint: the signed snapshot (bytea), the
samples learned, the running metrics, the learner's resume state and the labels-topic offset
to resume from. Everything is written in one transaction with the pending features
(``rowcast.pending_labels``), the labels held until their features come
(``rowcast.held_labels``) and the rows learned already (``rowcast.learned_labels``, what makes
"each row learned at most once" hold across restarts), so after a kill -9 at any moment the
learner restores a state that is consistent with its offset: replaying from there learns each
label exactly once.

``rowcast.model_control`` fences learners (a learner that lost its partition cannot write:
each claim bumps ``epoch``, and every checkpoint checks it under a row lock), records the pin
(what scorers serve) and carries rollback requests to the learner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

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
CREATE TABLE IF NOT EXISTS rowcast.pending_labels (
    deployment  text NOT NULL,
    pk          text NOT NULL,
    entry       json NOT NULL,
    scored_at   timestamptz NOT NULL,
    PRIMARY KEY (deployment, pk)
);
CREATE INDEX IF NOT EXISTS pending_labels_scored_at ON rowcast.pending_labels (deployment, scored_at);
CREATE TABLE IF NOT EXISTS rowcast.held_labels (
    deployment  text NOT NULL,
    generation  text NOT NULL,
    pk          text NOT NULL,
    entry       json NOT NULL,
    labelled_at timestamptz NOT NULL,
    PRIMARY KEY (deployment, generation, pk)
);
CREATE INDEX IF NOT EXISTS held_labels_labelled_at ON rowcast.held_labels (deployment, labelled_at);
CREATE TABLE IF NOT EXISTS rowcast.learned_labels (
    deployment  text NOT NULL,
    generation  text NOT NULL,
    pk          text NOT NULL,
    entry       json NOT NULL,
    learned_at  timestamptz NOT NULL,
    PRIMARY KEY (deployment, generation, pk)
);
CREATE INDEX IF NOT EXISTS learned_labels_learned_at ON rowcast.learned_labels (deployment, learned_at);
CREATE OR REPLACE VIEW rowcast.model_metrics AS
SELECT DISTINCT ON (deployment) deployment, version, samples, metrics, created_at
  FROM rowcast.model_versions ORDER BY deployment, version DESC;
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


def _checkpoint(row: tuple) -> Checkpoint:
    return Checkpoint(row[0], row[1], row[2], row[3], None if row[4] is None else bytes(row[4]),
                      row[5], row[6], row[7], row[8], row[9], row[10])


def latest(conn: psycopg.Connection, deployment: str, generation: str) -> Checkpoint | None:
    """The newest checkpoint of this generation (the one a restarted learner resumes from)."""
    row = conn.execute(
        f"SELECT {_FIELDS} FROM rowcast.model_versions WHERE deployment = %s AND generation = %s "
        "ORDER BY version DESC LIMIT 1", (deployment, generation)).fetchone()
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


def lock_control(conn: psycopg.Connection, deployment: str, epoch: int,
                 generation: str) -> Control:
    """Inside a checkpoint's transaction: lock the control row, refuse a stale learner."""
    row = conn.execute("SELECT epoch, pinned_version, rollback_to FROM rowcast.model_control "
                       "WHERE deployment = %s FOR UPDATE", (deployment,)).fetchone()
    if row is None or row[0] != epoch:
        raise Fenced(f"learner of {deployment!r} was superseded (epoch {epoch})")
    alive = conn.execute(
        "SELECT 1 FROM rowcast.deployments WHERE name = %s AND "
        "(extract(epoch FROM created_at) * 1000000)::bigint || '.' || version = %s",
        (deployment, generation)).fetchone()
    if alive is None:
        raise Redeployed(f"deployment {deployment!r} generation {generation} is gone")
    return Control(*row)


def write(conn: psycopg.Connection, ck: Checkpoint, keep_snapshots: int) -> int:
    """Store a checkpoint as the next version (call inside the transaction that locked control)."""
    version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM rowcast.model_versions "
                           "WHERE deployment = %s", (ck.deployment,)).fetchone()[0]
    conn.execute(
        "INSERT INTO rowcast.model_versions (deployment, version, generation, model, snapshot, "
        "samples, metrics, state, labels_offset, note) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
        "%s, %s)",
        (ck.deployment, version, ck.generation, ck.model, ck.snapshot, ck.samples,
         orjson.dumps(ck.metrics).decode(), orjson.dumps(ck.state).decode(), ck.labels_offset,
         ck.note))
    # history stays (metrics over time); old snapshots go, except a pinned one
    conn.execute(
        "UPDATE rowcast.model_versions v SET snapshot = NULL WHERE deployment = %s "
        "AND version <= %s AND snapshot IS NOT NULL AND version IS DISTINCT FROM "
        "(SELECT pinned_version FROM rowcast.model_control WHERE deployment = %s)",
        (ck.deployment, version - keep_snapshots, ck.deployment))
    return version


def rollback_target(conn: psycopg.Connection, deployment: str) -> int | None:
    """The version a pending ``rowcast model rollback`` asks for, if any."""
    row = conn.execute("SELECT rollback_to FROM rowcast.model_control WHERE deployment = %s",
                       (deployment,)).fetchone()
    return None if row is None else row[0]


def has_expired(conn: psycopg.Connection, deployment: str, retention_s: float) -> bool:
    """Pending features or held labels older than the retention wait to be expired (and
    counted) by a checkpoint. Learned-row markers expire quietly with the next checkpoint."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM rowcast.pending_labels WHERE deployment = %s "
        "AND scored_at < now() - make_interval(secs => %s)) OR EXISTS (SELECT 1 FROM "
        "rowcast.held_labels WHERE deployment = %s AND labelled_at < now() - "
        "make_interval(secs => %s))", (deployment, retention_s, deployment, retention_s)
    ).fetchone()[0]


def held_labels(conn: psycopg.Connection, deployment: str, generation: str) -> int:
    """Labels of this generation the learner holds because their row's features never came."""
    return conn.execute("SELECT count(*) FROM rowcast.held_labels WHERE deployment = %s "
                        "AND generation = %s", (deployment, generation)).fetchone()[0]


def clear_rollback(conn: psycopg.Connection, deployment: str) -> None:
    conn.execute("UPDATE rowcast.model_control SET rollback_to = NULL WHERE deployment = %s",
                 (deployment,))


def request_rollback(conn: psycopg.Connection, deployment: str, version: int) -> Checkpoint:
    """Ask the learner to continue from ``version``'s model and metrics (it applies the request
    at its next checkpoint, as a new version, so versions keep moving forward)."""
    ck = get(conn, deployment, version)
    if ck.snapshot is None:
        raise ConfigError(f"version {version} of {deployment!r} has no snapshot any more "
                          "(only the newest are kept: ROWCAST_MODEL_VERSIONS_KEEP)")
    conn.execute("INSERT INTO rowcast.model_control (deployment, rollback_to) VALUES (%s, %s) "
                 "ON CONFLICT (deployment) DO UPDATE SET rollback_to = EXCLUDED.rollback_to",
                 (deployment, version))
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


_TABLES = {  # what PgPending keeps: table, time column, keyed by generation too
    "features": ("pending_labels", "scored_at", False),
    "held": ("held_labels", "labelled_at", True),
    "learned": ("learned_labels", "learned_at", True),
}


class PgPending:
    """What the learner keeps between events, in Postgres, changed in memory between checkpoints.

    Three maps by primary key: features waiting for a label (``rowcast.pending_labels``), labels
    waiting for their features (``rowcast.held_labels``) and rows learned already
    (``rowcast.learned_labels``); the last two per generation. Reads go to Postgres only for
    keys not seen since the last checkpoint (one query per map and batch, :meth:`prefetch`);
    writes wait for :meth:`flush`, inside the checkpoint's transaction, so the tables always
    match the checkpointed offset. Memory holds only what changed since the last checkpoint.
    """

    def __init__(self, conn: psycopg.Connection, deployment: str, generation: str = "") -> None:
        self.conn = conn
        self.deployment = deployment
        self.generation = generation
        self.cache: dict[str, dict[bytes, dict[str, Any] | None]] = {k: {} for k in _TABLES}
        self.dirty: dict[str, dict[bytes, dict[str, Any] | None]] = {k: {} for k in _TABLES}

    def prefetch(self, keys: Iterable[bytes]) -> None:
        keys = set(keys)
        for kind, (table, _, by_generation) in _TABLES.items():
            cache = self.cache[kind]
            missing = sorted(k for k in keys if k not in cache)
            if not missing:
                continue
            query = sql.SQL("SELECT pk, entry FROM rowcast.{} WHERE deployment = %s "
                            "AND pk = ANY(%s)").format(sql.Identifier(table))
            args: list[Any] = [self.deployment, [k.decode() for k in missing]]
            if by_generation:
                query += sql.SQL(" AND generation = %s")
                args.append(self.generation)
            found = {pk.encode(): entry for pk, entry in self.conn.execute(query, args)}
            for k in missing:
                cache[k] = found.get(k)

    def _get(self, kind: str, key: bytes) -> dict[str, Any] | None:
        if key not in self.cache[kind]:
            self.prefetch([key])
        return self.cache[kind].get(key)

    def _set(self, kind: str, key: bytes, entry: dict[str, Any] | None) -> None:
        self.cache[kind][key] = self.dirty[kind][key] = entry

    def put(self, key: bytes, entry: dict[str, Any]) -> None:
        self._set("features", key, entry)

    def pop(self, key: bytes) -> dict[str, Any] | None:
        entry = self._get("features", key)
        if entry is not None:
            self._set("features", key, None)
        return entry

    def hold(self, key: bytes, entry: dict[str, Any]) -> None:
        self._set("held", key, entry)

    def take_held(self, key: bytes) -> dict[str, Any] | None:
        entry = self._get("held", key)
        if entry is not None:
            self._set("held", key, None)
        return entry

    def learned(self, key: bytes) -> dict[str, Any] | None:
        return self._get("learned", key)

    def mark_learned(self, key: bytes, entry: dict[str, Any]) -> None:
        self._set("learned", key, entry)

    def flush(self, retention_s: float) -> tuple[int, int]:
        """Write what changed and expire what waited longer than ``retention_s``; returns how
        many features and how many held labels expired. Call inside the checkpoint's
        transaction."""
        expired = {}
        with self.conn.cursor() as cur:
            for kind, (table, at, by_generation) in _TABLES.items():
                name = sql.Identifier(table)
                dirty = self.dirty[kind]
                gone = [k.decode() for k, v in dirty.items() if v is None]
                kept = [(k.decode(), orjson.dumps(v).decode(), v["at_us"])
                        for k, v in dirty.items() if v is not None]
                where = sql.SQL("deployment = %s" + (" AND generation = %s" if by_generation
                                                     else ""))
                scope = [self.deployment] + ([self.generation] if by_generation else [])
                if gone:
                    cur.execute(sql.SQL("DELETE FROM rowcast.{} WHERE {} AND pk = ANY(%s)")
                                .format(name, where), [*scope, gone])
                if kept:
                    columns = "deployment, generation, pk, entry, " if by_generation \
                        else "deployment, pk, entry, "
                    conflict = "deployment, generation, pk" if by_generation else "deployment, pk"
                    cur.executemany(sql.SQL(
                        "INSERT INTO rowcast.{} (" + columns + "{}) VALUES ("
                        + "%s, " * len(scope) + "%s, %s, to_timestamp(%s / 1e6)) "
                        "ON CONFLICT (" + conflict + ") DO UPDATE SET entry = EXCLUDED.entry, "
                        "{} = EXCLUDED.{}").format(name, sql.Identifier(at), sql.Identifier(at),
                                                   sql.Identifier(at)),
                        [(*scope, *row) for row in kept])
                if by_generation:  # older generations' rows are of no use any more
                    cur.execute(sql.SQL("DELETE FROM rowcast.{} WHERE deployment = %s "
                                        "AND generation <> %s").format(name),
                                (self.deployment, self.generation))
                expired[kind] = cur.execute(sql.SQL(
                    "DELETE FROM rowcast.{} WHERE deployment = %s AND {} < now() - "
                    "make_interval(secs => %s)").format(name, sql.Identifier(at)),
                    (self.deployment, retention_s)).rowcount
        self.forget()
        return expired["features"], expired["held"]

    def forget(self) -> None:
        """Drop unflushed changes (after a failed checkpoint or on restore)."""
        for kind in _TABLES:
            self.cache[kind].clear()
            self.dirty[kind].clear()

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM rowcast.pending_labels WHERE deployment = %s",
                                 (self.deployment,)).fetchone()[0]
