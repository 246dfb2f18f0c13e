"""The logical replication slot and its publication: create, watch tables, peek, advance.

psycopg 3 has no replication-protocol connection, so the stream is read with
``pg_logical_slot_peek_binary_changes`` and acknowledged with ``pg_replication_slot_advance``:
peek, publish to Kafka, wait for the ack, *then* advance. Never ``get`` (it consumes before the
events are safe). The publication is created before the slot, because a slot created first fails
later with "publication does not exist".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from rowcast.core.errors import SourceError
from rowcast.core.lsn import format_lsn


@dataclass(frozen=True, slots=True)
class RawChange:
    """One pgoutput message as the server returned it."""

    lsn: int
    xid: int | None
    data: bytes


def check_server(conn: psycopg.Connection) -> None:
    """Refuse early, with the fix, when logical decoding cannot work on this server."""
    wal_level = conn.execute("SHOW wal_level").fetchone()[0]
    if wal_level != "logical":
        raise SourceError(
            f"wal_level is {wal_level!r}; logical decoding needs wal_level=logical "
            "(ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)"
        )
    can_replicate = conn.execute(
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    ).fetchone()[0]
    if not can_replicate:
        raise SourceError(
            "the connecting role lacks the REPLICATION attribute "
            "(ALTER ROLE <role> WITH REPLICATION), so it cannot use a replication slot"
        )


def table_key_columns(conn: psycopg.Connection, schema: str, table: str) -> tuple[str, ...]:
    """Primary-key columns in key order; refuses a table without one, with the reason."""
    exists = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if exists is None:
        raise SourceError(f"table {schema}.{table} does not exist")
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (exists[0],),
    ).fetchall()
    if not rows:
        raise SourceError(
            f"table {schema}.{table} has no primary key: rowcast keys predictions by it, and a "
            "published table without one makes the application's own UPDATEs and DELETEs fail"
        )
    return tuple(r[0] for r in rows)


def ensure_publication(conn: psycopg.Connection, publication: str) -> None:
    """Create the (initially empty) publication if it is missing; idempotent.

    It publishes a partitioned table's changes as the table's own (``publish_via_partition_root``,
    PostgreSQL 13+), set on a publication made before too: a deployment names the table, and
    without it every change came as one of the partition's, on a topic no worker reads, so a
    partitioned table's rows were never scored. Partitions created later are covered alike."""
    name = sql.Identifier(publication)
    found = conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s",
                         (publication,)).fetchone()
    if found is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} WITH (publish_via_partition_root = true)")
                     .format(name))
    elif not found[0]:
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)")
                     .format(name))


def published_tables(conn: psycopg.Connection, publication: str) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
        (publication,),
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def watch_table(conn: psycopg.Connection, publication: str, schema: str, table: str) -> None:
    """Add a table to the publication (after checking it has a primary key); idempotent."""
    table_key_columns(conn, schema, table)
    ensure_publication(conn, publication)
    if (schema, table) not in published_tables(conn, publication):
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(publication), sql.Identifier(schema, table)))


def ensure_slot(conn: psycopg.Connection, slot: str, publication: str) -> None:
    """Create the pgoutput slot after its publication; explains a full slot table."""
    ensure_publication(conn, publication)
    found = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    row = found.fetchone()
    if row is not None:
        if row[0] != "pgoutput":
            raise SourceError(f"slot {slot!r} exists with plugin {row[0]!r}, not pgoutput")
        return
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    except psycopg.errors.ConfigurationLimitExceeded as exc:
        raise SourceError(
            "all replication slots are in use: raise max_replication_slots or drop an unused "
            f"slot (SELECT slot_name FROM pg_replication_slots) — {exc}"
        ) from exc
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise SourceError(f"cannot create slot {slot!r}: {exc}") from exc


def drop_slot_and_publication(conn: psycopg.Connection, slot: str, publication: str) -> None:
    """Remove what :func:`ensure_slot` made, so no WAL stays pinned; idempotent."""
    try:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s", (slot,))
    except psycopg.errors.ObjectInUse as exc:
        raise SourceError(f"slot {slot!r} is in use by a running process; stop the rowcast "
                          f"source first ({exc})") from exc
    conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
    for table in ("source_positions", "heartbeats"):  # the slot's bookkeeping, if rowcast made it
        if conn.execute("SELECT to_regclass(%s)", (f"rowcast.{table}",)).fetchone()[0]:
            conn.execute(sql.SQL("DELETE FROM {} WHERE slot_name = %s").format(
                sql.Identifier("rowcast", table)), (slot,))


_PEEK = ("SELECT (lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, data "
         "FROM pg_logical_slot_peek_binary_changes("
         "%s, NULL, %s, 'proto_version', '1', 'publication_names', %s, 'messages', 'true')")


# pgoutput prints each column with its type's output function, under the settings of the session
# that peeks: a database or role default (ALTER DATABASE ... SET IntervalStyle = 'iso_8601') would
# otherwise change the text the source decodes. Pinned for the peek's transaction only
# (``set_config(..., true)`` = SET LOCAL), so nothing else on the connection is affected.
SESSION_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "TimeZone": "UTC",
    "extra_float_digits": "3",  # shortest exact float text (any value > 0 on PostgreSQL 12+)
}
_PIN = "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in SESSION_SETTINGS)
_PIN_ARGS = tuple(x for item in SESSION_SETTINGS.items() for x in item)


@contextmanager
def stream_changes(conn: psycopg.Connection, slot: str, publication: str, max_changes: int,
                   fetch_size: int = 2000) -> Iterator[Iterator[RawChange]]:
    """Whole transactions from the slot's confirmed position, without consuming them, streamed.

    The server stops after the transaction in which ``max_changes`` is reached, so one huge
    transaction comes whole: a server-side cursor hands it over ``fetch_size`` rows at a time
    (the server spills its result to disk beyond ``work_mem``), keeping the source's memory
    flat whatever the transaction's size. Values are printed under :data:`SESSION_SETTINGS`.
    """
    with conn.transaction(), conn.cursor(name="rowcast_peek", binary=True) as cur:
        conn.execute(_PIN, _PIN_ARGS)
        cur.itersize = fetch_size
        cur.execute(_PEEK, (slot, max_changes, publication))
        yield (RawChange(r[0], r[1], bytes(r[2])) for r in cur)


def advance(conn: psycopg.Connection, slot: str, lsn: int) -> None:
    """Confirm everything up to ``lsn``: the server may now recycle that WAL."""
    conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))


def current_wal_lsn(conn: psycopg.Connection) -> int:
    """Where the server is writing WAL now: cheap, so the source polls it before peeking."""
    return conn.execute("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").fetchone()[0]



def system_identifier(conn: psycopg.Connection) -> str | None:
    """The cluster's system identifier (``pg_control_system()``, PostgreSQL 9.6+), as text.

    Why: LSNs are positions in one cluster's WAL; a database restored into another cluster
    (dump/restore, major upgrade) starts another history whose LSNs may be lower. Every
    position rowcast stores carries this identifier (see :mod:`rowcast.connectors.position_history`).
    Executable by PUBLIC on PostgreSQL 15 (checked with a REPLICATION-only role); a server that
    refuses it returns None, and only the WAL-position check then guards (logged by the caller).
    """
    try:
        with conn.transaction():  # a refusal must not abort the caller's transaction
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
        return None
    return row[0] if row else None


NUDGE_LOGGED, NUDGE_WAITED, NUDGE_NO_SLOT = "logged", "waited", "no_slot"


def log_running_xacts(conn: psycopg.Connection, slot: str, timeout_ms: int = 250) -> str:
    """Make the server log a running-transactions record, so the slot's restart LSN can move.

    Why: ``peek`` and ``advance`` decode from the slot's ``restart_lsn``, which only moves past
    such a record; PostgreSQL 15 logs one about every 15 s, so under write load each call re-reads
    up to 15 s of WAL (measured: +1.5 ms per MB per peek). PostgreSQL 16 has
    ``pg_log_standby_snapshot()``; on 15, creating a logical slot logs the record, so a
    temporary slot is created and dropped (~1.4 ms). The record is logged before slot creation
    waits for in-flight transactions, so a timeout still did the job.

    Returns :data:`NUDGE_LOGGED`; :data:`NUDGE_WAITED` when creation waited ``timeout_ms`` for a
    transaction in flight (one left open: the caller should nudge less often, each such nudge
    costs it that long); :data:`NUDGE_NO_SLOT` when no slot was free (the source still works,
    only slower).
    """
    temp = f"{slot}_rx"
    conn.execute(f"SET statement_timeout = {int(timeout_ms)}")
    try:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput', true)", (temp,))
        conn.execute("SELECT pg_drop_replication_slot(%s)", (temp,))
    except psycopg.errors.QueryCanceled:
        return NUDGE_WAITED
    except psycopg.errors.ConfigurationLimitExceeded:
        return NUDGE_NO_SLOT
    finally:
        conn.execute("SET statement_timeout = 0")
    return NUDGE_LOGGED


def current_flush_lsn(conn: psycopg.Connection) -> int:
    """WAL flushed to disk: the furthest point a peek started now can decode to."""
    return conn.execute("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint").fetchone()[0]


def confirmed_lsn(conn: psycopg.Connection, slot: str) -> int:
    row = conn.execute("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint "
                       "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
