"""Deployments stored in Postgres (``rowcast.deployments``), created from the table's own shape.

``create_deployment`` reads the table's columns and primary key from the catalog, so feature kinds
come from the real column types and bad definitions (unknown table or column, target among the
features, a target type the model cannot learn) are refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import psycopg

from connectors.slot import table_key_columns
from models.catalog import get_model
from models.deployment import Deployment, Feature, FeatureKind
from rowcast.errors import ConfigError, SourceError

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
"""

_KINDS: dict[str, FeatureKind] = {
    "int2": "number", "int4": "number", "int8": "number", "float4": "number",
    "float8": "number", "numeric": "number", "bool": "boolean", "text": "category",
    "varchar": "category", "bpchar": "category", "timestamp": "timestamp",
}

_TARGET_KINDS = {
    "regression": {"number"},
    "binary": {"boolean", "number"},
    "multiclass": {"category", "boolean", "number"},
    "anomaly": {"number", "category", "boolean", "timestamp"},
}


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def split_table(name: str) -> tuple[str, str]:
    """``"t"`` → ``("public", "t")``; ``"s.t"`` → ``("s", "t")``."""
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, FeatureKind | None]:
    """Column name → feature kind (None where the type cannot be a feature yet)."""
    rows = conn.execute(
        "SELECT a.attname, t.typname, t.typtype FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", (schema, table)).fetchall()
    return {name: ("category" if typtype == "e" else _KINDS.get(typname))
            for name, typname, typtype in rows}


def create_deployment(conn: psycopg.Connection, name: str, table: str, target: str,
                      features: Sequence[str] | None, model: str) -> Deployment:
    """Validate against the live table and store (or replace) a deployment."""
    schema, table_name = split_table(table)
    spec = get_model(model)
    try:
        keys = table_key_columns(conn, schema, table_name)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    columns = table_columns(conn, schema, table_name)
    if target not in columns:
        raise ConfigError(f"target column {target!r} is not in {schema}.{table_name}; "
                          f"columns: {', '.join(columns)}")
    target_kind = columns[target]
    if target_kind not in _TARGET_KINDS[spec.task]:
        raise ConfigError(f"target {target!r} has a type that a {spec.task} model "
                          f"({spec.name}) cannot learn")
    if features is None:
        features = [c for c, k in columns.items() if k and c != target and c not in keys]
    unknown = [f for f in features if f not in columns]
    if unknown:
        raise ConfigError(f"feature columns not in {schema}.{table_name}: {', '.join(unknown)}")
    unusable = [f for f in features if columns[f] is None]
    if unusable:
        raise ConfigError(f"feature columns of a type rowcast cannot use yet: {', '.join(unusable)}")
    deployment = Deployment(name, schema, table_name, target,
                            tuple(Feature(f, columns[f]) for f in features),  # type: ignore[arg-type]
                            spec.name, keys, target_kind or "number")
    _store(conn, deployment)
    return deployment


def _store(conn: psycopg.Connection, d: Deployment) -> None:
    conn.execute(
        "INSERT INTO rowcast.deployments (name, schema_name, table_name, target, target_kind, "
        "features, model, key_columns) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET schema_name = EXCLUDED.schema_name, "
        "table_name = EXCLUDED.table_name, target = EXCLUDED.target, "
        "target_kind = EXCLUDED.target_kind, features = EXCLUDED.features, "
        "model = EXCLUDED.model, key_columns = EXCLUDED.key_columns, "
        "version = rowcast.deployments.version + 1, updated_at = now()",
        (d.name, d.schema, d.table, d.target, d.target_kind,
         orjson.dumps([[f.name, f.kind] for f in d.features]).decode(), d.model,
         orjson.dumps(list(d.key_columns)).decode()))


def list_deployments(conn: psycopg.Connection) -> list[Deployment]:
    rows = conn.execute(
        "SELECT name, schema_name, table_name, target, features, model, key_columns, "
        "target_kind, version FROM rowcast.deployments ORDER BY name").fetchall()
    return [Deployment(r[0], r[1], r[2], r[3], tuple(Feature(n, k) for n, k in r[4]), r[5],
                       tuple(r[6]), r[7], r[8]) for r in rows]


def delete_deployment(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM rowcast.deployments WHERE name = %s", (name,)).rowcount > 0
