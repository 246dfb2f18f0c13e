"""The last commit LSN the CDC source published, kept in Postgres beside the slot.

The server persists a slot's position only at checkpoints, so after a crash it can replay
transactions the source already published; this remembered LSN lets the source drop them.
"""

from __future__ import annotations

import psycopg

DDL = """
CREATE SCHEMA IF NOT EXISTS rowcast;
CREATE TABLE IF NOT EXISTS rowcast.source_positions (
    slot_name        text PRIMARY KEY,
    last_commit_lsn  pg_lsn NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def load_position(conn: psycopg.Connection, slot_name: str) -> int:
    row = conn.execute(
        "SELECT (last_commit_lsn - '0/0'::pg_lsn)::bigint FROM rowcast.source_positions "
        "WHERE slot_name = %s", (slot_name,)).fetchone()
    return int(row[0]) if row else 0


def save_position(conn: psycopg.Connection, slot_name: str, lsn: int) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = off")
        _upsert(conn, slot_name, lsn)


def _upsert(conn: psycopg.Connection, slot_name: str, lsn: int) -> None:
    conn.execute(
        "INSERT INTO rowcast.source_positions (slot_name, last_commit_lsn) "
        "VALUES (%s, '0/0'::pg_lsn + %s::numeric) ON CONFLICT (slot_name) DO UPDATE "
        "SET last_commit_lsn = EXCLUDED.last_commit_lsn, updated_at = now()",
        (slot_name, lsn))
