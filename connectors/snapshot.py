"""Existing rows as change events (``op: r``): for a new deployment, and for ``rowcast backfill``.

Why no gap: the table joins the publication first, so every change committed after that is
streamed; the snapshot reads afterwards, so every row committed before it is read. A row
changed in between can arrive twice (once read, once streamed), which the sink's upsert makes
harmless. Values are read through each type's output function (``format('%s', col)``), the very
text pgoutput sends, and encoded by the same :mod:`rowcast.connectors.pgtypes` decoders as the stream.

Snapshot records can carry a ``rowcast.deployment`` header: only that deployment scores them,
so adding a model to a table does not make the others score and learn old rows again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import psycopg
from kafka import KafkaProducer
from psycopg import sql

from rowcast.connectors import pgtypes, slot
from rowcast.connectors.kafka_clients import AckedSends, ensure_topics
from rowcast.connectors.registry import list_deployments
from rowcast.core.envelope import SourceInfo, build_value, encode_key
from rowcast.core.errors import ConfigError, SourceError
from rowcast.core.settings import Settings
from rowcast.models.deployment import Deployment

DEPLOYMENT_HEADER = "rowcast.deployment"

log = logging.getLogger(__name__)


def _columns(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[str, int]]:
    return conn.execute(
        "SELECT a.attname, a.atttypid::int FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (schema, table)).fetchall()


def _key_sql(conn: psycopg.Connection, schema: str, table: str) -> sql.Composable:
    """The row's canonical key computed in SQL (``rowcast._key_sql``, see
    :mod:`rowcast.core.keys`): what the sink stored for a row streamed or read before."""
    text = conn.execute("SELECT rowcast._key_sql(%s::regclass, 't')",
                        (sql.Identifier(schema, table).as_string(conn),)).fetchone()[0]
    return sql.SQL(text)


def _query(schema: str, table: str, columns: list[tuple[str, int]], keys: tuple[str, ...],
           missing_for: str | None, key_sql: sql.Composable | None = None,
           except_keys: Sequence[str] = ()) -> sql.Composed:
    as_text = sql.SQL(", ").join(
        sql.SQL("CASE WHEN t.{c} IS NULL THEN NULL ELSE format('%s', t.{c}) END").format(
            c=sql.Identifier(name)) for name, _ in columns)
    query = sql.SQL("SELECT {} FROM {} AS t").format(as_text, sql.Identifier(schema, table))
    if missing_for is not None:
        assert key_sql is not None, "missing_for needs the key expression"
        query += sql.SQL(
            " WHERE NOT EXISTS (SELECT 1 FROM rowcast.predictions p WHERE p.deployment = {} "
            "AND p.source_schema = {} AND p.source_table = {} AND p.pk = {})"
        ).format(sql.Literal(missing_for), sql.Literal(schema), sql.Literal(table), key_sql)
        if except_keys:  # rows set aside on the dead-letter topic (see rowcast.ops.reconcile)
            query += sql.SQL(" AND {} NOT IN (SELECT jsonb_array_elements({}::jsonb))").format(
                key_sql, sql.Literal("[" + ",".join(except_keys) + "]"))
    return query + sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(map(sql.Identifier, keys)))


def read_rows(conn: psycopg.Connection, schema: str, table: str, chunk: int = 5000,
              missing_for: str | None = None, except_keys: Sequence[str] = ()
              ) -> Iterator[dict[str, Any]]:
    """The table's rows in key order, each as the stream encodes it (``after`` of an envelope);
    ``missing_for``: only rows without a prediction of that deployment, leaving out
    ``except_keys`` (:func:`~rowcast.core.keys.stored_key` texts). Read with a server-side
    cursor in the caller's transaction, ``chunk`` rows at a time."""
    keys = slot.table_key_columns(conn, schema, table)
    columns = _columns(conn, schema, table)
    decoders = [pgtypes.decoder_for(oid) for _, oid in columns]
    names = [name for name, _ in columns]
    query = _query(schema, table, columns, keys, missing_for,
                   _key_sql(conn, schema, table) if missing_for is not None else None,
                   except_keys)
    with conn.cursor(name=f"rowcast_snapshot_{time.monotonic_ns()}") as cur:
        cur.itersize = chunk
        cur.execute(query)
        for values in cur:
            yield {n: (None if v is None else d(v.encode()))
                   for n, d, v in zip(names, decoders, values, strict=True)}


def emit_snapshot(conn: psycopg.Connection, producer: KafkaProducer, settings: Settings,
                  schema: str, table: str, *, for_deployment: str | None = None,
                  missing_only: bool = False, chunk: int = 5000, except_keys: Sequence[str] = ()
                  ) -> int:
    """Publish the table's rows as ``r`` events; returns how many. Waits for Kafka's acks.
    ``missing_only``: rows without a prediction, but not those of ``except_keys``."""
    keys = slot.table_key_columns(conn, schema, table)
    topic = settings.source_topic(schema, table)
    headers = [(DEPLOYMENT_HEADER, for_deployment.encode())] if for_deployment else None
    missing_for = for_deployment if missing_only else None
    lsn = slot.current_wal_lsn(conn)
    now_us = time.time_ns() // 1000
    source = SourceInfo(settings.topic_prefix, conn.info.dbname, schema, table, lsn, None, now_us,
                        snapshot="true")
    sends, count = AckedSends(producer, "snapshot events"), 0
    with conn.transaction():
        for after in read_rows(conn, schema, table, chunk, missing_for, except_keys):
            count += 1
            value = build_value(op="r", before=None, after=after, source=source,
                                tx_order=count, now_us=now_us)
            sends.send(topic, encode_key({k: after[k] for k in keys}), orjson.dumps(value),
                       headers=headers)
            if len(sends) >= chunk:
                sends.wait()
    sends.wait()
    return count


def backfill_deployment(conn: psycopg.Connection, producer: KafkaProducer, settings: Settings,
                        name: str, missing_only: bool, except_keys: Sequence[str] = ()
                        ) -> tuple[Deployment, int]:
    """Re-emit deployment ``name``'s rows for it alone (all, or those without a prediction
    except ``except_keys``); :class:`ConfigError` when there is no such deployment."""
    found = [d for d in list_deployments(conn) if d.name == name]
    if not found:
        raise ConfigError(f"no deployment named {name!r} (rowcast deployments lists them)")
    d = found[0]
    return d, emit_snapshot(conn, producer, settings, d.schema, d.table, for_deployment=d.name,
                            missing_only=missing_only, except_keys=except_keys)


def serve_backfill_requests(conn: psycopg.Connection, producer: KafkaProducer,
                            settings: Settings) -> dict[str, int]:
    """Emit the rows without a prediction of each deployment a ``rowcast.deploy`` call asked
    for (``p_backfill``, its default: a SQL function cannot reach Kafka), as ``rowcast deploy``
    does itself; how many rows for each. A request is forgotten only once Kafka acknowledged
    its rows, so a source killed midway emits them again after its restart (a row scored twice
    is one upsert); a request for a deployment removed since is dropped. ``conn`` autocommits."""
    done: dict[str, int] = {}
    pending = conn.execute("SELECT deployment, requested_at FROM rowcast.backfill_requests "
                           "ORDER BY requested_at").fetchall()
    if not pending:
        return done
    deployments = {d.name: d for d in list_deployments(conn)}
    for name, requested_at in pending:
        d = deployments.get(name)
        if d is not None:
            try:
                slot.table_key_columns(conn, d.schema, d.table)  # still there, with its key
            except SourceError as exc:  # renamed or dropped since: status says so; not retried
                log.warning("no backfill for %s: %s", name, exc)
            else:
                try:
                    ensure_topics(settings, [settings.source_topic(d.schema, d.table)])
                    done[name] = emit_snapshot(conn, producer, settings, d.schema, d.table,
                                               for_deployment=d.name, missing_only=True)
                except Exception as exc:  # Kafka or the database: this one again next time
                    log.warning("backfill of %s: %s (tried again)", name, exc)
                    continue
        # a request made again meanwhile (a redeploy) is served on the next look
        conn.execute("DELETE FROM rowcast.backfill_requests WHERE deployment = %s "
                     "AND requested_at = %s", (name, requested_at))
    return done
