"""The table most pipeline tests use: ``(id int PRIMARY KEY, x float8, y float8)``, target y.

One place to make it, deploy it and fill it, so each test says only what is particular to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import psycopg

from rowcast.connectors.kafka_clients import ensure_topics
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import watch_table
from tests.helpers.cli import deploy_cli


def deployed_xy_table(settings, conn: psycopg.Connection, deployment: str, prefix: str,
                      model: str = "linear_regression") -> str:
    """Create ``public.<prefix>_<random>`` and deploy ``deployment`` on it (``model``, a
    regression of y on x, through the CLI); returns the table's name."""
    table = f"{prefix}_{uuid.uuid4().hex[:6]}"
    conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    done = deploy_cli(settings, deployment, "--table", table, "--target", "y", "--model", model)
    assert done.returncode == 0, done.stderr
    return table


def insert_xy(conn: psycopg.Connection, table: str, ids: Iterable[int],
              label: Callable[[int], float | None] = lambda i: 2.0 * i) -> None:
    """Insert rows ``(i, float(i), label(i))`` in one transaction."""
    with conn.transaction():
        conn.cursor().executemany(f"INSERT INTO public.{table} VALUES (%s, %s, %s)",
                                  [(i, float(i), label(i)) for i in ids])


def watch(settings, pg_conn, ddl: str) -> tuple[str, str]:
    table = f"shape_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} {ddl}")
    init_database(pg_conn, settings)
    watch_table(pg_conn, settings.publication_name, "public", table)
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": 1}), [topic])
    return table, topic


def sql_deployed(settings, conn: psycopg.Connection, name: str, table: str,
                 features: Iterable[str] = ("x",), target: str = "y") -> None:
    """rowcast's schema made, earlier tests' deployments gone, and ``name`` deployed on the
    existing ``table`` (as written in SQL, quotes and all) with one ``rowcast.deploy`` call,
    without emitting its existing rows: only what the test then writes is scored."""
    init_database(conn, settings)
    conn.execute("DELETE FROM rowcast.deployments")
    conn.execute("SELECT rowcast.deploy(%s, %s, %s, %s, p_backfill => false)",
                 (name, table, target, list(features)))
