"""TRUNCATE removes a table's rows as DELETE does, so their predictions go too.

pgoutput sends one Truncate message, not a delete per row, so there is no key to send a
tombstone for. What the source does instead, when it reads one (:func:`forget_truncated`):

- it records the table's last TRUNCATE, as its position in WAL, in ``rowcast.truncations``;
- it deletes the stored predictions of rows changed before that position.

The sink stores no prediction of a row changed before its table's last TRUNCATE (the upsert's
``NOT EXISTS`` in :mod:`rowcast.connectors.pg_sink`), so a prediction still on its way when
the TRUNCATE was read is dropped too. Rows inserted after it, in the same transaction or later,
have later positions and keep theirs. The source's transaction first takes a lock on
``rowcast.predictions`` that waits for the sink's open write and holds the next one back, so a
prediction written concurrently is either deleted or not stored: none survives.

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
"""

_RECORD = """
INSERT INTO rowcast.truncations (schema_name, table_name, lsn) VALUES (%s, %s, %s::pg_lsn)
ON CONFLICT (schema_name, table_name) DO UPDATE
SET lsn = greatest(rowcast.truncations.lsn, EXCLUDED.lsn), truncated_at = now()
"""
_FORGET = """
DELETE FROM rowcast.predictions
 WHERE deployment IN (SELECT name FROM rowcast.deployments)  -- the primary key's prefix
   AND source_schema = %s AND source_table = %s AND source_lsn < %s::pg_lsn
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def forget_truncated(conn: psycopg.Connection, tables: Iterable[tuple[str, str]], lsn: int
                     ) -> int:
    """Record that ``tables`` were truncated at WAL position ``lsn`` and delete the predictions
    of their rows changed before it, in one transaction (``conn`` autocommits; replaying the
    same TRUNCATE changes nothing); the number of predictions deleted."""
    deleted = 0
    with conn.transaction():
        conn.execute("LOCK TABLE rowcast.predictions IN SHARE ROW EXCLUSIVE MODE")
        for schema, table in tables:
            conn.execute(_RECORD, (schema, table, format_lsn(lsn)))
            deleted += conn.execute(_FORGET, (schema, table, format_lsn(lsn))).rowcount
    return deleted
