"""Heartbeats: timestamped WAL markers that turn the slot's byte lag into seconds.

A replication slot knows how many *bytes* it is behind, not how old they are. Every
``heartbeat_interval_s`` the CDC source writes a marker row (the WAL position and the clock at
that moment) into ``rowcast.heartbeats``. The write also gives an idle watched table WAL to move
past, so the slot advances and lag is measurable there too (what Debezium's
``heartbeat.action.query`` is for). The slot is ``behind_seconds`` = the age of the oldest
marker it has not yet confirmed, 0 when it confirmed them all; precise to one interval.

Readers of lag (``rowcast status``, the demo) may call :func:`beat` too: with the source
down no new markers would be written and the age would stop growing.

>>> # beat(conn, "rowcast"); behind_seconds(conn, "rowcast") -> 0.0 once the source caught up
"""

from __future__ import annotations

import psycopg

DDL = """
CREATE SCHEMA IF NOT EXISTS rowcast;
CREATE TABLE IF NOT EXISTS rowcast.heartbeats (
    slot_name   text NOT NULL,
    lsn         pg_lsn NOT NULL,
    emitted_at  timestamptz NOT NULL,
    PRIMARY KEY (slot_name, lsn)
);
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def beat(conn: psycopg.Connection, slot: str) -> None:
    """Write a marker and forget the confirmed ones (the newest is kept for its timestamp)."""
    with conn.transaction():
        conn.execute(
            "DELETE FROM rowcast.heartbeats h USING pg_replication_slots s "
            "WHERE s.slot_name = %(slot)s AND h.slot_name = %(slot)s "
            "AND h.lsn < s.confirmed_flush_lsn "
            "AND h.lsn < (SELECT max(lsn) FROM rowcast.heartbeats WHERE slot_name = %(slot)s)",
            {"slot": slot})
        conn.execute(
            "INSERT INTO rowcast.heartbeats (slot_name, lsn, emitted_at) "
            "VALUES (%s, pg_current_wal_insert_lsn(), clock_timestamp()) ON CONFLICT DO NOTHING",
            (slot,))


def behind_seconds(conn: psycopg.Connection, slot: str) -> float:
    """Age of the oldest marker the slot has not confirmed; 0.0 when it confirmed them all."""
    row = conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - min(h.emitted_at))::float8 "
        "FROM rowcast.heartbeats h JOIN pg_replication_slots s ON s.slot_name = h.slot_name "
        "WHERE h.slot_name = %s AND h.lsn >= s.confirmed_flush_lsn", (slot,)).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0
