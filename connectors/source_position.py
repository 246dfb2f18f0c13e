"""The last commit LSN the CDC source published, kept in Postgres beside the slot.

The server persists a slot's position only at checkpoints, so after a crash it can replay
transactions the source already published; this remembered LSN lets the source drop them.

It is stored with the cluster's system identifier: an LSN means something only in one cluster's
WAL. When the row belongs to another history (another identifier, or an LSN ahead of the
server's WAL: the database was restored into another cluster, see
:mod:`rowcast.connectors.position_history`), the source says so in one ERROR and forgets it, so it
drops nothing as a replay; the slot alone decides what comes next.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from rowcast.connectors import position_history as history
from rowcast.core.lsn import format_lsn

DDL = """
CREATE SCHEMA IF NOT EXISTS rowcast;
CREATE TABLE IF NOT EXISTS rowcast.source_positions (
    slot_name        text PRIMARY KEY,
    last_commit_lsn  pg_lsn NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE rowcast.source_positions ADD COLUMN IF NOT EXISTS system_identifier text;
"""


@dataclass(frozen=True, slots=True)
class Remembered:
    """The position to drop replays at or below, and the cluster it is a position of."""

    lsn: int
    system_identifier: str | None


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def load_position(conn: psycopg.Connection, slot_name: str) -> Remembered:
    """The remembered position if it is of this server's history, else 0 (said loudly)."""
    server_id, wal = history.server_identity(conn)
    row = conn.execute(
        "SELECT (last_commit_lsn - '0/0'::pg_lsn)::bigint, system_identifier "
        "FROM rowcast.source_positions WHERE slot_name = %s", (slot_name,)).fetchone()
    if row is None:
        return Remembered(0, server_id)
    lsn, stored_id = int(row[0]), row[1]
    reason = history.other_history(stored_id, server_id, lsn, wal)
    if reason is None:
        if stored_id is None and server_id is not None:  # stored before identifiers were
            save_position(conn, slot_name, lsn, server_id)
        return Remembered(lsn, server_id or stored_id)
    history.announce("source", f"the commit LSN slot {slot_name!r} last published "
                     f"({format_lsn(lsn)})", stored_id, server_id, reason,
                     "forgetting it: every transaction the slot hands out is published, none "
                     "is dropped as a replay")
    save_position(conn, slot_name, 0, server_id)
    return Remembered(0, server_id)


def save_position(conn: psycopg.Connection, slot_name: str, lsn: int,
                  system_identifier: str | None) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        _upsert(conn, slot_name, lsn, system_identifier)


def _upsert(conn: psycopg.Connection, slot_name: str, lsn: int,
            system_identifier: str | None) -> None:
    conn.execute(
        "INSERT INTO rowcast.source_positions (slot_name, last_commit_lsn, system_identifier) "
        "VALUES (%s, '0/0'::pg_lsn + %s::numeric, %s) ON CONFLICT (slot_name) DO UPDATE "
        "SET last_commit_lsn = EXCLUDED.last_commit_lsn, "
        "system_identifier = EXCLUDED.system_identifier, updated_at = now()",
        (slot_name, lsn, system_identifier))
