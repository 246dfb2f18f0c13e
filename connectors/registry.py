"""Deployments stored in Postgres (``rowcast.deployments``), created from the table's own shape.

Creation goes through the SQL function ``rowcast.deploy`` (see :mod:`rowcast.connectors.deploy_sql`), so the
CLI and a plain ``SELECT rowcast.deploy(...)`` share one validation: feature kinds come from the
real column types, and bad definitions are refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from rowcast.connectors import deploy_sql, operations, pending_labels, versions
from rowcast.core.errors import ConfigError
from rowcast.models.catalog import CATALOG
from rowcast.models.deployment import Deployment, Feature, LabelSource

DEPLOY_REFUSED = "RC001"  # SQLSTATE raised by rowcast.deploy for a definition it refuses

DDL = """
CREATE SCHEMA IF NOT EXISTS rowcast;
CREATE TABLE IF NOT EXISTS rowcast.deployments (
    name          text PRIMARY KEY,
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    target        text NOT NULL,
    target_kind   text NOT NULL,
    features      jsonb NOT NULL,
    model         text NOT NULL,
    key_columns   jsonb NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE rowcast.deployments ADD COLUMN IF NOT EXISTS labels jsonb;
-- written by rowcast.deploy (p_backfill), served by the source: rows without a prediction to
-- emit for a deployment made with one SQL call, which cannot reach Kafka itself
CREATE TABLE IF NOT EXISTS rowcast.backfill_requests (
    deployment   text PRIMARY KEY,
    requested_at timestamptz NOT NULL DEFAULT now()
);
-- written by workers: a deployment (of one generation) they cannot serve, read by status
CREATE TABLE IF NOT EXISTS rowcast.deployment_failures (
    name        text PRIMARY KEY,
    generation  text NOT NULL,
    reason      text NOT NULL,
    error       text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
"""

_COLUMNS = ("name, schema_name, table_name, target, features, model, key_columns, target_kind, "
            "version, labels, (extract(epoch FROM created_at) * 1000000)::bigint, "
            "(extract(epoch FROM updated_at) * 1000000)::bigint")


def ensure_schema(conn: psycopg.Connection, publication: str,
                  custom_model_modules: Sequence[str], replace_modules: bool = False) -> None:
    """Tables, the model catalog as rows (so SQL can check model names), the deploy function.

    ``custom_model_modules`` (``ROWCAST_CUSTOM_MODEL_MODULES``) is stored too: ``rowcast.deploy``
    cannot read the environment, and must refuse a ``module:factory`` the operator did not
    allow as the CLI does. ``replace_modules`` (``rowcast init``) replaces a stored list; any
    other start stores it only when none is, so a process started without the setting (a sink
    needs none) does not clear the operator's list."""
    conn.execute(DDL)
    conn.execute(deploy_sql.sql_file("config.sql"))
    versions.ensure_schema(conn)
    pending_labels.ensure_schema(conn)
    operations.ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO rowcast.config VALUES ('publication', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (publication,))
        cur.execute("INSERT INTO rowcast.config VALUES ('custom_model_modules', %s) ON CONFLICT "
                    + ("(key) DO UPDATE SET value = EXCLUDED.value" if replace_modules
                       else "DO NOTHING"), (",".join(custom_model_modules),))
        cur.execute("DELETE FROM rowcast.models WHERE NOT name = ANY(%s)", (list(CATALOG),))
        cur.executemany(
            "INSERT INTO rowcast.models VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE "
            "SET task = EXCLUDED.task, description = EXCLUDED.description",
            [(s.name, s.task, s.description) for s in CATALOG.values()])
    conn.execute(deploy_sql.sql_file("deploy.sql"))
    conn.execute(deploy_sql.sql_file("undeploy.sql"))


def remove_deployment(conn: psycopg.Connection, name: str) -> None:
    """Stop a deployment (``rowcast.undeploy``): running workers drop it at their next refresh;
    its table leaves the publication when no other deployment uses it. Predictions stay."""
    if not conn.execute("SELECT rowcast.undeploy(%s)", (name,)).fetchone()[0]:
        raise ConfigError(f"no deployment named {name!r} (rowcast deployments lists them)")


def create_deployment(conn: psycopg.Connection, name: str, table: str, target: str,
                      features: Sequence[str] | None, model: str,
                      labels_table: str | None = None, labels_key: str | None = None,
                      labels_column: str | None = None, backfill: bool = False) -> Deployment:
    """Validate against the live table and store (or replace) a deployment, via ``rowcast.deploy``.
    ``backfill``: ask the source to emit the rows without a prediction (a caller that emits them
    itself, as ``rowcast deploy`` does, leaves it False)."""
    try:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM rowcast.deploy(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (name, table, target, list(features) if features is not None else None, model,
             labels_table, labels_key, labels_column, backfill),
        ).fetchone()
    except psycopg.DatabaseError as exc:
        if exc.sqlstate == DEPLOY_REFUSED:
            raise ConfigError(exc.diag.message_primary or str(exc)) from None
        if isinstance(exc, psycopg.errors.DataError | psycopg.errors.ProgrammingError):
            # anything else PostgreSQL refuses in the arguments (a name it cannot read, rights)
            raise ConfigError(f"PostgreSQL refused the deployment: "
                              f"{exc.diag.message_primary or str(exc).splitlines()[0]}") from None
        raise
    return _deployment(row)


def deployment_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM rowcast.deployments WHERE name = %s",
                        (name,)).fetchone() is not None


def list_deployments(conn: psycopg.Connection) -> list[Deployment]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM rowcast.deployments ORDER BY name").fetchall()
    return [_deployment(r) for r in rows]


def _deployment(r: tuple) -> Deployment:
    labels = LabelSource(r[9]["schema"], r[9]["table"], r[9]["key"], r[9]["column"]) \
        if r[9] else None
    return Deployment(r[0], r[1], r[2], r[3], tuple(Feature(n, k) for n, k in r[4]), r[5],
                      tuple(r[6]), r[7], r[8], labels, r[10], r[11])


def record_failures(conn: psycopg.Connection, failed: Mapping[str, tuple[str, str, str]],
                    built: Mapping[str, str]) -> None:
    """What a worker found when it built its deployments, for ``rowcast status`` (another
    process): ``failed`` maps name to (generation, reason, error); ``built`` maps the names it
    serves to their generation, whose earlier failures are forgotten."""
    with conn.transaction():
        for name, (generation, reason, error) in failed.items():
            conn.execute(
                "INSERT INTO rowcast.deployment_failures (name, generation, reason, error) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET generation = "
                "EXCLUDED.generation, reason = EXCLUDED.reason, error = EXCLUDED.error, "
                "failed_at = now()", (name, generation, reason, error))
        if built:
            conn.execute("DELETE FROM rowcast.deployment_failures f USING unnest(%s::text[], "
                         "%s::text[]) AS b(name, generation) WHERE f.name = b.name AND "
                         "f.generation = b.generation AND f.reason <> %s",
                         (list(built), list(built.values()), SNAPSHOT_REFUSED))


SNAPSHOT_REFUSED = "snapshot_refused"


def record_snapshot_refusal(conn: psycopg.Connection, name: str, generation: str,
                            error: str) -> None:
    """A worker could not verify the model records of a deployment it serves (most often:
    processes that do not share one ROWCAST_SNAPSHOT_KEY), so it keeps serving an older or
    untrained version: an ERROR ``rowcast status`` and the dashboard must show."""
    conn.execute(
        "INSERT INTO rowcast.deployment_failures (name, generation, reason, error) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET generation = "
        "EXCLUDED.generation, reason = EXCLUDED.reason, error = EXCLUDED.error, "
        "failed_at = now() WHERE rowcast.deployment_failures.reason <> 'model_unavailable'",
        (name, generation, SNAPSHOT_REFUSED, error))


def clear_snapshot_refusal(conn: psycopg.Connection, name: str) -> None:
    conn.execute("DELETE FROM rowcast.deployment_failures WHERE name = %s AND reason = %s",
                 (name, SNAPSHOT_REFUSED))


MISSING_COLUMNS_SQL = """
SELECT d.name, c.col, c.sch, c.tab
  FROM rowcast.deployments d
  LEFT JOIN rowcast.models m ON m.name = d.model
 CROSS JOIN LATERAL (
       SELECT f.value->>0, d.schema_name, d.table_name, f.ord
         FROM jsonb_array_elements(d.features) WITH ORDINALITY AS f(value, ord)
       UNION ALL  -- the target, where labels come from the row (an anomaly model has none)
       SELECT d.target, d.schema_name, d.table_name, 0
        WHERE d.labels IS NULL AND m.task IS DISTINCT FROM 'anomaly'
       UNION ALL
       SELECT d.labels->>k.name, d.labels->>'schema', d.labels->>'table', k.ord
         FROM (VALUES ('key', -2), ('column', -1)) AS k(name, ord)
        WHERE d.labels IS NOT NULL) AS c(col, sch, tab, ord)
 WHERE to_regclass(format('%I.%I', c.sch, c.tab)) IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = to_regclass(format('%I.%I', c.sch, c.tab))
                      AND a.attname = c.col AND a.attnum > 0 AND NOT a.attisdropped
                      -- logical replication does not send a generated column: as if absent
                      AND a.attgenerated = '')
 ORDER BY d.name, c.ord
"""


def missing_columns(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Per deployment, the columns it names that its table (or labels table) no longer has:
    renamed or dropped since it was deployed (or generated columns, which logical replication
    does not send; ``rowcast.deploy`` refuses them since). Its rows then go to the dead-letter topic as
    ``missing_column`` (:class:`rowcast.models.features.MissingColumn`); ``rowcast status``
    says so before any row arrives. A table that is gone altogether is not reported here."""
    out: dict[str, list[str]] = {}
    for name, column, schema, table in conn.execute(MISSING_COLUMNS_SQL):
        out.setdefault(name, []).append(f"{column!r} of {schema}.{table}")
    return out


# each deployment's tables, ``name, sch, tab``: the one it scores and its labels table
DEPLOYMENT_TABLES = (
    "SELECT d.name, t.sch, t.tab FROM rowcast.deployments d CROSS JOIN LATERAL ("
    "SELECT d.schema_name, d.table_name UNION SELECT d.labels->>'schema', d.labels->>'table' "
    "WHERE d.labels IS NOT NULL) AS t(sch, tab)")


def _by_deployment(conn: psycopg.Connection, query: str) -> dict[str, list[str]]:
    """``query``'s rows (deployment name, text) gathered per deployment, in their order."""
    out: dict[str, list[str]] = {}
    for name, text in conn.execute(query):
        out.setdefault(name, []).append(text)
    return out


def missing_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Per deployment, its table or labels table when it no longer exists under the name the
    deployment gives (dropped, or renamed: the publication follows a renamed table, so its rows
    come on a topic of the new name that no worker reads for this deployment)."""
    return _by_deployment(conn, f"SELECT name, sch || '.' || tab FROM ({DEPLOYMENT_TABLES}) t "
                          "WHERE to_regclass(format('%I.%I', sch, tab)) IS NULL ORDER BY name")


def unpublished_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Per deployment, its table or labels table when one of that name exists but is not in
    rowcast's publication: dropped and created again (a publication holds a table by its oid,
    so the new one is not in it) or taken out by hand. None of its changes reach rowcast, and
    nothing else would say so: the slot advances and every process is healthy."""
    return _by_deployment(
        conn, f"SELECT name, sch || '.' || tab FROM ({DEPLOYMENT_TABLES}) t "
        "JOIN rowcast.config c ON c.key = 'publication' "
        "WHERE to_regclass(format('%I.%I', sch, tab)) IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname = c.value "
        "AND p.schemaname = sch AND p.tablename = tab) ORDER BY name, sch, tab")


def changed_keys(conn: psycopg.Connection) -> dict[str, tuple[list[str], list[str]]]:
    """Per deployment, ``(deployed with, now)``: the primary key columns of its table when they
    are no longer those it was deployed with (a key column renamed, the key moved to other
    columns). The source keys rows by the key the WAL names, so rows written since are stored
    and learned under the new key, while the ``_scored`` view, backfill and reconcile still
    join on the old one, and labels of rows scored before the change find no features."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for name, deployed, now in conn.execute(
            "SELECT d.name, d.key_columns, to_jsonb(k.cols) FROM rowcast.deployments d "
            "CROSS JOIN LATERAL (SELECT array_agg(a.attname::text ORDER BY u.ord) "
            "FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS u(attnum, ord) "
            "ON true JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum "
            "WHERE i.indrelid = to_regclass(format('%I.%I', d.schema_name, d.table_name)) "
            "AND i.indisprimary) AS k(cols) "
            "WHERE to_regclass(format('%I.%I', d.schema_name, d.table_name)) IS NOT NULL "
            "AND d.key_columns IS DISTINCT FROM to_jsonb(k.cols) ORDER BY d.name"):
        out[name] = (list(deployed), list(now or ()))
    return out


def topic_collisions(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Per deployment, ``"its table and another"`` for each other table some deployment reads
    whose change topic is its table's (or labels table's) or collides with it in Kafka
    (``rowcast._topic_fold``: characters a topic cannot hold become ``_``, and Kafka reads
    ``.`` and ``_`` alike).
    ``rowcast.deploy`` refuses such a table; deployments made before it did are shown here:
    a shared topic mixes two tables' rows, and a colliding one is refused by Kafka, which
    stops the source and the workers."""
    if conn.execute("SELECT to_regproc('rowcast._topic_fold')").fetchone()[0] is None:
        return {}
    return _by_deployment(
        conn, f"WITH u AS ({DEPLOYMENT_TABLES}), t AS (SELECT u.*, "
        "rowcast._topic_fold(u.sch, u.tab) AS fold FROM u) "
        "SELECT DISTINCT a.name, a.sch || '.' || a.tab || ' and ' || b.sch || '.' || b.tab "
        "FROM t a JOIN t b ON a.fold = b.fold AND (a.sch, a.tab) <> (b.sch, b.tab) ORDER BY 1, 2")


def list_failures(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """Failures workers recorded, by deployment name (empty before ``rowcast init`` made the
    table). Callers compare ``generation`` with the deployment's: a redeploy starts afresh."""
    if conn.execute("SELECT to_regclass('rowcast.deployment_failures')").fetchone()[0] is None:
        return {}
    return {r[0]: {"generation": r[1], "reason": r[2], "error": r[3], "since": r[4]}
            for r in conn.execute("SELECT name, generation, reason, error, "
                                  "extract(epoch FROM failed_at)::float8 "
                                  "FROM rowcast.deployment_failures")}
