"""Create everything rowcast keeps in Postgres, idempotently (``rowcast init``)."""

from __future__ import annotations

import psycopg

from connectors import pg_sink, slot, source_position
from models import registry
from rowcast.settings import Settings


def init_database(conn: psycopg.Connection, settings: Settings) -> None:
    """Schema, tables, publication and slot: publication first, or the slot fails later."""
    slot.check_server(conn)
    registry.ensure_schema(conn)
    pg_sink.ensure_schema(conn)
    source_position.ensure_schema(conn)
    slot.ensure_slot(conn, settings.slot_name, settings.publication_name)
