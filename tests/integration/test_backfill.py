"""Existing rows: emitted as op r when a model is deployed, encoded exactly as the stream does."""

from __future__ import annotations

import uuid

import pytest

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.schema import init_database
from rowcast.connectors.snapshot import emit_snapshot
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.kafka_reading import drain_rows
from tests.helpers.tables import watch
from tests.helpers.waiting import wait_until

TYPES = ("id int PRIMARY KEY, n numeric(20,4), f float8, t text, c char(3), b boolean, d date, "
         "ts timestamp, tz timestamptz, iv interval, u uuid, j jsonb, by bytea, a int[], s text[]")
ROW = ("1, 12.5, 'NaN', 'héllo', 'ab', true, '1969-07-20', '2024-01-02 03:04:05.6', "
       "'2024-01-02 03:04:05+02', '1 day 02:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
       "'{\"k\": [1, null]}', '\\x00ff', '{1,NULL}', '{\"a,b\",NULL}'")


def test_snapshot_rows_are_encoded_exactly_as_streamed_rows(settings, pg_conn):
    table, topic = watch(settings, pg_conn, f"({TYPES})")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES ({ROW})")
    producer = make_producer(settings)
    assert CdcSource(settings, pg_conn, producer).poll_once() == 1
    assert emit_snapshot(pg_conn, producer, settings, "public", table) == 1
    producer.close()
    streamed, snapshot = (r.value for r in drain_rows(settings, topic, 2))
    assert (streamed["op"], snapshot["op"]) == ("c", "r")
    assert snapshot["source"]["snapshot"] == "true"
    assert snapshot["after"] == streamed["after"]


def scored(conn, deployment: str) -> dict[int, object]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT (pk->>'id')::int, scored_at FROM rowcast.predictions WHERE deployment = %s",
        (deployment,))}


@pytest.mark.timeout(240)
def test_deploying_scores_existing_rows_once_and_only_for_the_new_deployment(settings, pg_conn,
                                                                            tmp_path):
    table = f"existing_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    pg_conn.execute(f"INSERT INTO public.{table} SELECT g, g, 2 * g FROM generate_series(1, 50) g")
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    done = deploy_cli(settings, "first", "--table", table, "--target", "y")
    assert done.returncode == 0, done.stderr
    assert "emitted 50 existing rows without a prediction" in done.stdout

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        wait_until(lambda: len(scored(pg_conn, "first")) == 50, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))
        pg_conn.execute(f"INSERT INTO public.{table} SELECT g, g, 2 * g "
                        "FROM generate_series(51, 60) g")
        wait_until(lambda: len(scored(pg_conn, "first")) == 60, timeout_s=60)
        before = scored(pg_conn, "first")

        done = deploy_cli(settings, "second", "--table", table, "--target", "y",
                          "--model", "hoeffding_tree_regressor")
        assert "emitted 60 existing rows" in done.stdout, done.stderr
        wait_until(lambda: len(scored(pg_conn, "second")) == 60, timeout_s=90,
                   message=lambda: pipeline.log_tail("worker"))
        assert scored(pg_conn, "first") == before  # the other deployment did not rescore

        again = deploy_cli(settings, "second", "--table", table, "--target", "y",
                           "--model", "hoeffding_tree_regressor")
        assert "emitted 0 existing rows" in again.stdout  # nothing missing
