"""TRUNCATE removes a table's rows as DELETE does, so their predictions go too.

pgoutput sends one Truncate message, not a delete per row, so there is no key to send a
tombstone for. What the source does instead, when it reads one (:func:`record_truncation`): it records the
table's last TRUNCATE, as its position in WAL, in ``rowcast.truncations``, in a transaction
that first takes a lock on ``rowcast.predictions``: it waits for the sink's open write and holds
the next one back. From then on the sink stores no prediction of a row changed before that
position (the upsert's ``NOT EXISTS`` in :mod:`rowcast.connectors.pg_sink`), so a prediction
still on its way is dropped; every one stored before is there to be deleted. The deleting
(:func:`clear_truncated`) is done afterwards, in slices and without the lock, by the source's
background thread, so a TRUNCATE of a large table holds neither the source's round nor the
sink. Rows inserted after the TRUNCATE, in its transaction or later, have later positions and
keep theirs.

The predictions topic keeps the truncated rows' records (as Debezium's topics do): a consumer
that needs to know listens to the table itself. Labels that were waiting for a truncated row
expire as any other (``ROWCAST_LABEL_RETENTION_S``).
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from rowcast.core.lsn import format_lsn

DDL = """
CREATE TABLE IF NOT EXISTS rowcast.truncations (
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    lsn          pg_lsn NOT NULL,
    truncated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);
-- false until every stored prediction of a row changed before lsn is deleted
ALTER TABLE rowcast.truncations ADD COLUMN IF NOT EXISTS cleared boolean NOT NULL DEFAULT false;
"""

_RECORD = """
INSERT INTO rowcast.truncations (schema_name, table_name, lsn) VALUES (%s, %s, %s::pg_lsn)
ON CONFLICT (schema_name, table_name) DO UPDATE
SET lsn = greatest(rowcast.truncations.lsn, EXCLUDED.lsn), truncated_at = now(), cleared = false
"""
_SLICE = """
DELETE FROM rowcast.predictions WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM rowcast.predictions
     WHERE deployment IN (SELECT name FROM rowcast.deployments)  -- the primary key's prefix
       AND source_schema = %s AND source_table = %s AND source_lsn < %s LIMIT %s))
"""
SLICE_ROWS = 10_000  # predictions deleted per statement: short transactions, bounded WAL


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def record_truncation(conn: psycopg.Connection, tables: Iterable[tuple[str, str]], lsn: int
                      ) -> None:
    """Record that ``tables`` were truncated at WAL position ``lsn`` (``conn`` autocommits;
    replaying the same TRUNCATE changes nothing): from its commit on, the sink stores no
    prediction of their rows changed before it. :func:`clear_truncated` deletes those stored."""
    with conn.transaction():
        conn.execute("LOCK TABLE rowcast.predictions IN SHARE ROW EXCLUSIVE MODE")
        for schema, table in tables:
            conn.execute(_RECORD, (schema, table, format_lsn(lsn)))


def clear_truncated(conn: psycopg.Connection, slice_rows: int = SLICE_ROWS) -> int:
    """Delete the stored predictions of truncated rows, a slice per transaction, and mark each
    truncation cleared; how many were deleted (``conn`` autocommits)."""
    deleted = 0
    for schema, table, lsn in conn.execute(
            "SELECT schema_name, table_name, lsn FROM rowcast.truncations WHERE NOT cleared"
            ).fetchall():
        while True:
            done = conn.execute(_SLICE, (schema, table, lsn, slice_rows)).rowcount
            deleted += done
            if done < slice_rows:
                break
        conn.execute("UPDATE rowcast.truncations SET cleared = true WHERE schema_name = %s "
                     "AND table_name = %s AND lsn = %s", (schema, table, lsn))
    return deleted
