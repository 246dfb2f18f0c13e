"""Primary keys of every common type: the key the source and the snapshot put on Kafka, the key
the sink stores and the key the SQL side computes from the row are one and the same, so the
``_scored`` view, ``rowcast reconcile`` and ``rowcast backfill`` (missing only) all find each row."""

from __future__ import annotations

import uuid

import orjson
import pytest
from psycopg import sql

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.snapshot import emit_snapshot
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.kafka_reading import drain_rows
from tests.helpers.learning import fast
from tests.helpers.tables import watch
from tests.helpers.waiting import wait_until

# name -> (key column(s) DDL, primary key, key values as SQL literals, one row each)
KEYS: dict[str, tuple[str, str, list[str]]] = {
    "int2": ("k smallint", "k", ["1", "-2", "32767"]),
    "int8": ("k bigint", "k", ["9223372036854775807", "-1", "0"]),
    "num": ("k numeric", "k", ["1.50", "1e20", "-7.125", "12345678901234567890.0123456789"]),
    "txt": ("k text", "k", ["'plain'", "'héllo wörld ✓ 🎉'", "'it''s \"quoted\"'",
                            "'back\\slash'"]),
    "uuid": ("k uuid", "k", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                             "'B1EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12'"]),
    "date": ("k date", "k", ["'1969-07-20'", "'2024-02-29'", "'infinity'"]),
    "ts": ("k timestamp", "k", ["'2024-01-02 03:04:05.123456'", "'1960-01-01 00:00:00'"]),
    "tstz": ("k timestamptz", "k", ["'2024-01-02 03:04:05.5+02'",
                                    "'2024-06-30 23:59:59.999999-07'", "'2000-01-01 00:00:00+00'"]),
    "bytea": ("k bytea", "k", ["'\\x00ff'", "'\\x'", "decode(repeat('ab', 100), 'hex')"]),
    "comp": ("name text, x0 float8, day date", "name, day",
             ["'a', 0, '2024-01-01'", "'a', 0, '2024-01-02'", "'b''c', 0, '2024-01-01'"]),
}
# types outside the end-to-end list whose keys must agree all the same (cheap check only)
MORE_KEYS: dict[str, tuple[str, list[str]]] = {
    "int4": ("int", ["7"]),
    "float8": ("float8", ["1.1", "1e20", "'NaN'"]),
    "bool": ("boolean", ["true"]),
    "bpchar": ("char(4)", ["'ab'"]),
    "time": ("time", ["'03:04:05.25'"]),
    "timetz": ("timetz", ["'03:04:05.25+05:30'"]),
    "interval": ("interval", ["'1 year 2 mons -3 days 04:05:06.5'"]),
    "tsinf": ("timestamptz", ["'-infinity'"]),
    # years outside 1-9999: the source prints them as java.time's ISO formatter does
    # (astronomical BC years, a sign beyond 4 digits); the SQL key must say the same
    "tsyears": ("timestamptz", ["'4713-01-01 00:00:00+00 BC'", "'0044-03-15 12:00:00.5+00 BC'",
                                "'0001-12-31 23:59:59+00 BC'", "'0001-01-01 00:00:00+00'",
                                "'12345-06-07 08:09:10.000001+00'"]),
    "datebc": ("date", ["'4713-01-01 BC'", "'0001-12-31 BC'"]),
    "tsbc": ("timestamp", ["'4713-01-01 00:00:00 BC'", "'0001-12-31 23:59:59.5 BC'"]),
}


def _create(pg_conn, name: str, key_ddl: str, pk: str, literals: list[str]) -> str:
    table = f"key_{name}_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} ({key_ddl}, x float8, y float8, "
                    f"PRIMARY KEY ({pk}))")
    for i, literal in enumerate(literals):
        pg_conn.execute(f"INSERT INTO public.{table} VALUES ({literal}, {i}, {2 * i})")
    return table


def _key_sql(pg_conn, table: str) -> sql.Composable:
    text = pg_conn.execute("SELECT rowcast._key_sql(%s::regclass, 't')",
                           (f"public.{table}",)).fetchone()[0]
    return sql.SQL(text)


@pytest.mark.timeout(240)
def test_streamed_and_snapshot_keys_equal_the_key_sql_computes(settings, pg_conn):
    cases = {name: (key_ddl, pk, literals) for name, (key_ddl, pk, literals) in KEYS.items()}
    cases.update({name: (f"k {ddl}", "k", literals) for name, (ddl, literals) in MORE_KEYS.items()})
    producer = make_producer(settings)
    try:
        for name, (key_ddl, pk, literals) in cases.items():
            table, topic = watch(settings, pg_conn, f"({key_ddl}, x float8, y float8, "
                                                    f"PRIMARY KEY ({pk}))")
            for i, literal in enumerate(literals):
                pg_conn.execute(f"INSERT INTO public.{table} VALUES ({literal}, {i}, {2 * i})")
            assert CdcSource(settings, pg_conn, producer).poll_once() == len(literals)
            assert emit_snapshot(pg_conn, producer, settings, "public", table) == len(literals)
            keys = [r.key for r in drain_rows(settings, topic, 2 * len(literals))]
            assert len(keys) == 2 * len(literals)
            assert set(keys[:len(literals)]) == set(keys[len(literals):]), name  # stream = snapshot
            query = sql.SQL("SELECT count(*) FROM public.{} t WHERE {} = %s::jsonb").format(
                sql.Identifier(table), _key_sql(pg_conn, table))
            for key in keys:
                found = pg_conn.execute(query, (key.decode(),)).fetchone()[0]
                computed = pg_conn.execute(sql.SQL("SELECT {} FROM public.{} t").format(
                    _key_sql(pg_conn, table), sql.Identifier(table))).fetchall()
                assert found == 1, f"{name}: Kafka key {key.decode()} vs SQL keys {computed}"
    finally:
        producer.close()


@pytest.mark.timeout(420)
def test_every_key_type_is_scored_joined_reconciled_and_not_backfilled_again(settings, pg_conn,
                                                                            tmp_path):
    settings = fast(settings)
    tables: dict[str, tuple[str, list[str]]] = {}
    for name, (key_ddl, pk, literals) in KEYS.items():
        half = len(literals) // 2  # existing rows come by the snapshot, the rest by the stream
        table = _create(pg_conn, name, key_ddl, pk, literals[:half])
        done = deploy_cli(settings, f"key_{name}", "--table", table, "--target", "y",
                          "--features", "x", "--no-backfill")
        assert done.returncode == 0, done.stderr
        done = rowcast_cli(settings, "backfill", f"key_{name}")
        assert f"emitted {half} existing rows without a prediction" in done.stdout, done.stderr
        tables[name] = (table, literals[half:])

    def predicted(name: str) -> int:
        return pg_conn.execute("SELECT count(*) FROM rowcast.predictions WHERE deployment = %s",
                               (f"key_{name}",)).fetchone()[0]

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        for name, (table, rest) in tables.items():
            for i, literal in enumerate(rest, start=len(KEYS[name][2]) - len(rest)):
                pg_conn.execute(f"INSERT INTO public.{table} VALUES ({literal}, {i}, {2 * i})")
        for name in KEYS:
            wait_until(lambda name=name: predicted(name) == len(KEYS[name][2]), timeout_s=120,
                       message=lambda name=name: f"{name}: {predicted(name)} predicted\n"
                       + pipeline.log_tail("worker"))

        for name in KEYS:
            # as text: psycopg cannot load a date of 'infinity'
            rows = pg_conn.execute(sql.SQL("SELECT v::text, v.rowcast_prediction FROM (SELECT * "
                                           "FROM rowcast.{}) v").format(
                sql.Identifier(f"key_{name}_scored"))).fetchall()
            assert len(rows) == len(KEYS[name][2])
            unjoined = [text for text, prediction in rows if prediction is None]
            assert not unjoined, f"{name}: rows without their prediction in the view: {unjoined}"

        wait_until(lambda: rowcast_cli(settings, "reconcile").returncode == 0, timeout_s=90,
                   interval_s=1, message=lambda: rowcast_cli(settings, "reconcile").stdout)
        reports = orjson.loads(rowcast_cli(settings, "reconcile", "--json").stdout)
        assert {r["deployment"]: (r["rows"], r["missing"], r["orphans"]) for r in reports} == {
            f"key_{name}": (len(literals), 0, 0) for name, (_, _, literals) in KEYS.items()}

        for name in KEYS:
            again = rowcast_cli(settings, "backfill", f"key_{name}")
            assert again.returncode == 0, again.stderr
            assert "emitted 0 existing rows without a prediction" in again.stdout, again.stdout


def test_the_scored_view_lists_the_table_columns_in_table_order(settings, pg_conn):
    table = f"order_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (zeta text, b float8, id int PRIMARY KEY, "
                    "a float8, unused_by_model jsonb)")
    done = deploy_cli(settings, "ordered", "--table", table, "--target", "a",
                      "--features", "zeta,b", "--no-backfill")
    assert done.returncode == 0, done.stderr
    columns = [r[0] for r in pg_conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'rowcast.ordered_scored'::regclass "
        "AND attnum > 0 ORDER BY attnum")]
    assert columns == ["zeta", "b", "id", "a", "rowcast_prediction", "rowcast_score",
                       "rowcast_model_version", "rowcast_scored_at"]
