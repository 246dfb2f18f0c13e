"""TRUNCATE removes rows as DELETE does, so their predictions go too: those stored, and those
still on their way to the sink (scored before the TRUNCATE, written after it). Rows inserted
after it, in the same transaction or later, keep theirs."""

from __future__ import annotations

import uuid

import pytest

from rowcast.ops.pipeline import Pipeline
from tests.helpers.kafka_reading import drain
from tests.helpers.tables import sql_deployed
from tests.helpers.waiting import wait_until


def scored(conn, deployment: str) -> dict[int, int]:
    """Stored predictions: key -> the LSN of the row change scored."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT (pk->>'id')::int, source_lsn - '0/0' FROM rowcast.predictions "
        "WHERE deployment = %s", (deployment,))}


@pytest.mark.timeout(300)
def test_truncated_rows_lose_their_predictions_and_later_rows_keep_theirs(settings, pg_conn,
                                                                         tmp_path):
    name = f"trunc_{uuid.uuid4().hex[:6]}"
    table = f'public."{name}"'
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    sql_deployed(settings, pg_conn, name, table)
    topic = settings.predictions_topic(name)

    # the sink is not running: the predictions of rows 1-3 wait on the topic
    with Pipeline(settings, tmp_path / "logs", ("source", "worker")) as pipeline:
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 1, NULL), (2, 2, NULL), (3, 3, NULL)")
        drain(settings, topic, 3)
        with pg_conn.transaction():  # in one transaction: 4 goes with the TRUNCATE, 5 stays
            pg_conn.execute(f"INSERT INTO {table} VALUES (4, 4, NULL)")
            pg_conn.execute(f"TRUNCATE {table}")
            pg_conn.execute(f"INSERT INTO {table} VALUES (5, 5, NULL)")
        pg_conn.execute(f"INSERT INTO {table} VALUES (2, 20, NULL)")  # a key back again
        drain(settings, topic, 6)
        assert all(pipeline.alive().values())

    with Pipeline(settings, tmp_path / "logs2", ("source", "worker", "sink")) as pipeline:
        wait_until(lambda: set(scored(pg_conn, name)) == {2, 5}, timeout_s=90,
                   message=lambda: f"{scored(pg_conn, name)}\n{pipeline.log_tail('sink')}")
        stored = scored(pg_conn, name)
        # the stored prediction of 2 is that of its new row, inserted after 5, not the old one
        assert stored[2] > stored[5]
        assert conn_rows(pg_conn, name) == {2, 5}

        # with everything stored: a TRUNCATE takes the stored predictions away
        pg_conn.execute(f"TRUNCATE {table}")
        pg_conn.execute(f"INSERT INTO {table} VALUES (9, 9, NULL)")
        wait_until(lambda: set(scored(pg_conn, name)) == {9}, timeout_s=90,
                   message=lambda: f"{scored(pg_conn, name)}\n{pipeline.log_tail('source')}")


def conn_rows(conn, name: str) -> set[int]:
    return {r[0] for r in conn.execute(f'SELECT id FROM public."{name}"')}


def test_stored_predictions_of_a_large_truncated_table_are_deleted_in_slices(settings, pg_conn):
    from rowcast.connectors.pg_sink import upsert
    from rowcast.connectors.truncations import clear_truncated, record_truncation
    from rowcast.core.prediction import PredictionRecord

    name = f"slices_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, x float8, y float8)")
    sql_deployed(settings, pg_conn, name, f"public.{name}")
    now = 1_700_000_000_000_000
    upsert(pg_conn, [PredictionRecord(name, "linear_regression", 1, "public", name, {"id": i},
                                      1.0, 1.0, 100 + i, now, now) for i in range(25)])
    record_truncation(pg_conn, [("public", name)], 120)  # after rows 0-19, before 20-24
    # from now on, a prediction of a row changed before the TRUNCATE is not stored
    upsert(pg_conn, [PredictionRecord(name, "linear_regression", 1, "public", name, {"id": 99},
                                      1.0, 1.0, 119, now, now)])
    assert clear_truncated(pg_conn, slice_rows=7) == 20
    assert set(scored(pg_conn, name)) == set(range(20, 25))
    assert pg_conn.execute("SELECT cleared FROM rowcast.truncations WHERE table_name = %s",
                           (name,)).fetchone()[0] is True
    assert clear_truncated(pg_conn) == 0  # nothing left to do
