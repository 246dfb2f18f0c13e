"""Deploying with one SQL call scores the rows already in the table, as ``rowcast deploy`` does:
``rowcast.deploy`` leaves a request, and the running source emits the rows without a prediction.
``p_backfill => false`` opts out; the CLI, which emits them itself, leaves no request behind."""

from __future__ import annotations

import uuid

import pytest

from rowcast.connectors.schema import init_database
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.waiting import wait_until


def scored(conn, deployment: str) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT (pk->>'id')::int FROM rowcast.predictions WHERE deployment = %s", (deployment,))}


def requests(conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT deployment FROM rowcast.backfill_requests")]


@pytest.mark.timeout(300)
def test_a_sql_deploy_scores_the_rows_already_in_the_table(settings, pg_conn, tmp_path):
    table = f"public.existing_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    pg_conn.execute(f"INSERT INTO {table} SELECT g, g, NULL FROM generate_series(1, 30) g")
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    pg_conn.execute("DELETE FROM rowcast.backfill_requests")

    with Pipeline(settings, tmp_path / "logs", ("source", "worker", "sink")) as pipeline:
        pg_conn.execute("SELECT rowcast.deploy('by_sql', %s, 'y', ARRAY['x'])", (table,))
        pg_conn.execute("SELECT rowcast.deploy('not_now', %s, 'y', ARRAY['x'], "
                        "p_backfill => false)", (table,))
        pg_conn.execute(f"INSERT INTO {table} VALUES (31, 31, NULL)")
        wait_until(lambda: scored(pg_conn, "by_sql") == set(range(1, 32)), timeout_s=120,
                   message=lambda: f"{len(scored(pg_conn, 'by_sql'))} scored\n"
                                   f"{pipeline.log_tail('source')}")
        wait_until(lambda: requests(pg_conn) == [], timeout_s=30,
                   message=lambda: f"{requests(pg_conn)}")
        # the opted-out deployment scores new rows only
        wait_until(lambda: scored(pg_conn, "not_now") == {31}, timeout_s=60,
                   message=lambda: f"{scored(pg_conn, 'not_now')}")

        # the CLI emits the rows itself (and says how many): no second emission is asked for
        done = deploy_cli(settings, "by_cli", "--table", table, "--target", "y")
        assert done.returncode == 0 and "emitted 31 existing rows" in done.stdout, done.stderr
        assert requests(pg_conn) == []
        wait_until(lambda: scored(pg_conn, "by_cli") == set(range(1, 32)), timeout_s=120,
                   message=lambda: f"{len(scored(pg_conn, 'by_cli'))} scored")


def test_a_request_whose_table_is_gone_does_not_hold_back_the_others(settings, pg_conn):
    from rowcast.connectors.kafka_clients import make_producer
    from rowcast.connectors.snapshot import serve_backfill_requests

    suffix = uuid.uuid4().hex[:6]
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    pg_conn.execute("DELETE FROM rowcast.backfill_requests")
    for name in ("a", "b"):
        pg_conn.execute(f"CREATE TABLE public.{name}_{suffix} (id int PRIMARY KEY, x float8, "
                        "y float8)")
        pg_conn.execute(f"INSERT INTO public.{name}_{suffix} VALUES (1, 1, 1), (2, 2, 2)")
        pg_conn.execute(f"SELECT rowcast.deploy('{name}_{suffix}', 'public.{name}_{suffix}', "
                        "'y', ARRAY['x'])")
    # a's table is renamed before its rows were emitted: its request is older than b's
    pg_conn.execute(f"ALTER TABLE public.a_{suffix} RENAME TO gone_{suffix}")
    producer = make_producer(settings)
    try:
        done = serve_backfill_requests(pg_conn, producer, settings)
    finally:
        producer.close()
    assert done == {f"b_{suffix}": 2}
    assert requests(pg_conn) == []  # a's is dropped: status shows its table missing
