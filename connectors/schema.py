"""Create everything rowcast keeps in Postgres, idempotently (``rowcast init``).

The source, workers and sink all call this at start, often at the same moment, so it runs under
an advisory lock: concurrent ``CREATE OR REPLACE FUNCTION`` or ``CREATE TABLE IF NOT EXISTS``
would otherwise fail with "tuple concurrently updated". The slot is created outside that
transaction, since Postgres refuses to create a logical slot in one that has written.
"""

from __future__ import annotations

import psycopg

from rowcast.connectors import heartbeat, pg_sink, registry, slot, source_position, truncations
from rowcast.core.settings import Settings

INIT_LOCK = 0x726F77636173  # "rowcas": one advisory lock key for schema setup


def init_database(conn: psycopg.Connection, settings: Settings, replace_modules: bool = False
                  ) -> None:
    """Schema, tables, functions, publication, then the slot: publication first, or it fails.
    ``replace_modules``: store this process's ``ROWCAST_CUSTOM_MODEL_MODULES`` even over a list
    stored before (``rowcast init``; see :func:`registry.ensure_schema`)."""
    slot.check_server(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (INIT_LOCK,))
        pg_sink.ensure_schema(conn)
        truncations.ensure_schema(conn)
        source_position.ensure_schema(conn)
        heartbeat.ensure_schema(conn)
        registry.ensure_schema(conn, settings.publication_name,
                               settings.allowed_model_modules(), replace_modules)
        slot.ensure_publication(conn, settings.publication_name)
    conn.execute("SELECT pg_advisory_lock(%s)", (INIT_LOCK,))
    try:
        slot.ensure_slot(conn, settings.slot_name, settings.publication_name)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (INIT_LOCK,))
