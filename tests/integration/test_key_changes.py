"""A deployed table changes under the deployment: its primary key column is renamed, or the
table is dropped and created again. Rows are not lost without a word: labels of rows written
since are learned, and ``rowcast status`` says what no longer matches and what to do."""

from __future__ import annotations

import uuid

import pytest

from rowcast.ops.monitor import Monitor
from rowcast.ops.pipeline import Pipeline
from rowcast.ops.status_screen import render
from tests.helpers.learning import counters, fast, learned
from tests.helpers.tables import sql_deployed
from tests.helpers.waiting import wait_until


def failed(settings, name: str) -> dict | None:
    """The deployment's failure in ``rowcast status``, checked against the screen's line: it
    says what happened and what to do, not that rows go to the dead letters (they do not)."""
    monitor = Monitor(settings)
    try:
        sample = monitor.sample()
        problem = next(d["failed"] for d in sample["deployments"] if d["name"] == name)
        line = next((li for li in render(sample).splitlines()
                     if li.startswith(f"FAILED {name}:")), None)
        assert (line is None) == (problem is None), line
        if line is not None:
            assert line == f"FAILED {name}: {problem['error']}"
        return problem
    finally:
        monitor.close()


def stored_keys(conn, name: str) -> list[dict]:
    return [r[0] for r in conn.execute(
        "SELECT pk FROM rowcast.predictions WHERE deployment = %s ORDER BY pk::text", (name,))]


@pytest.mark.timeout(300)
def test_after_a_key_column_is_renamed_labels_of_new_rows_are_learned_and_status_says_so(
        settings, pg_conn, tmp_path):
    settings = fast(settings)
    s = uuid.uuid4().hex[:6]
    name, table = f"rkey_{s}", f'public."Orders {s}"'
    pg_conn.execute(f'CREATE TABLE {table} ("Id" int PRIMARY KEY, x float8, y float8)')
    sql_deployed(settings, pg_conn, name, table)
    with Pipeline(settings, tmp_path / "logs", ("source", "worker", "learner", "sink")) as pipeline:
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 1, NULL), (2, 2, NULL)")
        wait_until(lambda: len(stored_keys(pg_conn, name)) == 2, 90,
                   message=lambda: pipeline.log_tail("worker"))
        assert failed(settings, name) is None

        pg_conn.execute(f'ALTER TABLE {table} RENAME COLUMN "Id" TO "Order Id"')
        pg_conn.execute(f"INSERT INTO {table} VALUES (3, 3, NULL), (4, 4, NULL)")
        wait_until(lambda: len(stored_keys(pg_conn, name)) == 4, 90,
                   message=lambda: f"{stored_keys(pg_conn, name)}\n{pipeline.log_tail('worker')}")
        assert stored_keys(pg_conn, name) == [{"Id": 1}, {"Id": 2}, {"Order Id": 3},
                                              {"Order Id": 4}]
        problem = failed(settings, name)
        assert problem is not None and problem["reason"] == "key_changed"
        assert '("Id")' not in problem["error"] and "(Order Id), deployed with (Id)" \
            in problem["error"] and "deploy again" in problem["error"]

        # labels by UPDATE for every row: those scored since the rename were keyed by
        # "Order Id", and their labels are too (they were keyed by "Id" = NULL, and lost)
        pg_conn.execute(f"UPDATE {table} SET y = 2 * x")
        wait_until(lambda: learned(pg_conn, name) >= 2, 90,
                   message=lambda: f"learned {learned(pg_conn, name)}; "
                                   f"{pipeline.log_tail('learner')}")
        wait_until(lambda: (counters(pg_conn, name) or {}).get("unmatched") == 2, 30,
                   message=lambda: str(counters(pg_conn, name)))
        assert learned(pg_conn, name) == 2
        assert all(pipeline.alive().values())


def test_a_table_dropped_and_created_again_shows_failed_until_it_is_deployed_again(
        settings, pg_conn):
    s = uuid.uuid4().hex[:6]
    name, table = f"recr_{s}", f'"Shop {s}"."Items"'
    ddl = f'CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)'
    pg_conn.execute(f'CREATE SCHEMA "Shop {s}"')
    pg_conn.execute(ddl)
    sql_deployed(settings, pg_conn, name, table)
    assert failed(settings, name) is None

    # a migration recreates the table: the publication held the old one (by oid)
    pg_conn.execute(f"DROP TABLE {table} CASCADE")  # CASCADE: the _scored view reads it
    pg_conn.execute(ddl)
    problem = failed(settings, name)
    assert problem is not None and problem["reason"] == "not_published"
    assert f"table Shop {s}.Items is not in rowcast's publication" in problem["error"]
    assert "deploy again" in problem["error"]

    pg_conn.execute("SELECT rowcast.deploy(%s, %s, 'y', ARRAY['x'], p_backfill => false)",
                    (name, table))
    assert failed(settings, name) is None
