"""A column a deployment uses is renamed (or dropped) under it: its rows are not scored as if the
value were unknown; they go to the dead-letter topic as ``missing_column``, ``rowcast status``
says which column and what to do, and after the fix a backfill scores the rows it missed."""

from __future__ import annotations

import uuid

import orjson
import pytest

from rowcast.connectors.schema import init_database
from rowcast.ops.monitor import Monitor
from rowcast.ops.pipeline import Pipeline
from rowcast.ops.status_screen import render
from tests.helpers.cli import rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.tables import sql_deployed
from tests.helpers.waiting import wait_until


def scored(conn, deployment: str) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT (pk->>'Id')::int FROM rowcast.predictions WHERE deployment = %s", (deployment,))}


def failed(settings) -> dict | None:
    monitor = Monitor(settings)
    try:
        return monitor.sample()["deployments"][0]["failed"]
    finally:
        monitor.close()


@pytest.mark.timeout(300)
def test_a_renamed_feature_column_dead_letters_its_rows_until_the_fix_then_backfill_scores_them(
        settings, pg_conn, tmp_path):
    schema, name = f"Shop_{uuid.uuid4().hex[:6]}", f"ren_{uuid.uuid4().hex[:6]}"
    table = f'"{schema}"."Orders"'
    pg_conn.execute(f'CREATE SCHEMA "{schema}"')
    pg_conn.execute(f'CREATE TABLE {table} ("Id" int PRIMARY KEY, "Qty" float8, "Price" float8, '
                    '"Total" float8)')
    sql_deployed(settings, pg_conn, name, table, ["Qty", "Price"], "Total")
    assert failed(settings) is None

    with Pipeline(settings, tmp_path / "logs", ("source", "worker", "sink")) as pipeline:
        pg_conn.execute(f'INSERT INTO {table} VALUES (1, 2, 3, NULL)')
        wait_until(lambda: scored(pg_conn, name) == {1}, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))

        # a migration renames a feature; a NULL in the other feature is still just "unknown"
        pg_conn.execute(f'ALTER TABLE {table} RENAME COLUMN "Qty" TO "Quantity"')
        pg_conn.execute(f'INSERT INTO {table} VALUES (2, 4, NULL, NULL), (3, 5, 6, NULL)')
        letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 2)]
        assert sorted(orjson.loads(le["key"]["data"])["Id"] for le in letters) == [2, 3]
        assert {(le["stage"], le["reason"]) for le in letters} == {("score", "missing_column")}
        assert all("'Qty'" in le["error"] and "renamed or dropped" in le["error"]
                   for le in letters)
        assert scored(pg_conn, name) == {1} and all(pipeline.alive().values())

        # the operator's screen names the column and the fix before anyone reads the topic
        problem = failed(settings)
        assert problem is not None and problem["reason"] == "missing_column"
        assert f"'Qty' of {schema}.Orders" in problem["error"]
        assert f"rowcast backfill {name}" in problem["error"]
        monitor = Monitor(settings)
        try:
            assert f"FAILED {name}: column 'Qty'" in render(monitor.sample())
        finally:
            monitor.close()

        # the fix: the column gets its name back; the rows it missed are scored by a backfill
        pg_conn.execute(f'ALTER TABLE {table} RENAME COLUMN "Quantity" TO "Qty"')
        assert failed(settings) is None
        done = rowcast_cli(settings, "backfill", name)
        assert done.returncode == 0, done.stderr
        pg_conn.execute(f'INSERT INTO {table} VALUES (4, 1, 1, NULL)')
        wait_until(lambda: scored(pg_conn, name) == {1, 2, 3, 4}, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))
        assert len(drain(settings, settings.dlq_topic, 2)) == 2  # nothing more went there


@pytest.mark.timeout(300)
def test_a_renamed_target_column_dead_letters_labels_and_rows_are_still_scored(
        settings, pg_conn, tmp_path):
    name = f"tgt_{uuid.uuid4().hex[:6]}"
    table = f"public.{name}"
    pg_conn.execute(f'CREATE TABLE {table} ("Id" int PRIMARY KEY, x float8, y float8)')
    sql_deployed(settings, pg_conn, name, table)

    with Pipeline(settings, tmp_path / "logs", ("source", "worker", "sink")) as pipeline:
        pg_conn.execute(f"ALTER TABLE {table} RENAME COLUMN y TO outcome")
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 2, 3)")
        pg_conn.execute(f"UPDATE {table} SET outcome = 4 WHERE \"Id\" = 1")
        wait_until(lambda: scored(pg_conn, name) == {1}, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))
        letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 2)]
        assert [le["reason"] for le in letters] == ["missing_column"] * 2
        assert all("'y'" in le["error"] for le in letters)
        assert f"'y' of public.{name}" in failed(settings)["error"]


@pytest.mark.timeout(120)
def test_a_renamed_or_dropped_table_is_shown_failed_with_what_to_do(settings, pg_conn):
    name = f"gone_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f'CREATE TABLE public."{name}" ("Id" int PRIMARY KEY, x float8, y float8)')
    sql_deployed(settings, pg_conn, name, f'public."{name}"')
    assert failed(settings) is None
    # the publication follows the renamed table: its rows now come under a name no worker reads
    pg_conn.execute(f'ALTER TABLE public."{name}" RENAME TO "{name}_v2"')
    problem = failed(settings)
    assert problem is not None and problem["reason"] == "missing_table"
    assert f"table public.{name} is not there any more" in problem["error"]
    assert f"rowcast undeploy {name}" in problem["error"]
    pg_conn.execute(f'ALTER TABLE public."{name}_v2" RENAME TO "{name}"')
    assert failed(settings) is None
    pg_conn.execute(f'DROP TABLE public."{name}" CASCADE')
    assert failed(settings)["reason"] == "missing_table"


def test_a_deployment_made_before_generated_columns_were_refused_shows_them_missing(
        settings, pg_conn):
    from rowcast.connectors.registry import missing_columns

    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    table = f"gen_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, a float8, "
                    "b float8 GENERATED ALWAYS AS (a * 2) STORED, y float8)")
    # as rowcast.deploy stored it before it refused generated columns
    pg_conn.execute("INSERT INTO rowcast.deployments (name, schema_name, table_name, target, "
                    "target_kind, features, model, key_columns) VALUES ('old_gen', 'public', "
                    "%s, 'y', 'number', '[[\"a\", \"number\"], [\"b\", \"number\"]]', "
                    "'linear_regression', '[\"id\"]')", (table,))
    assert missing_columns(pg_conn) == {"old_gen": [f"'b' of public.{table}"]}
