"""The key of a published row is what the WAL says at that row, never the catalog of now.

pgoutput's Relation message flags the replica identity's columns as of its WAL position (and is
sent again after DDL): with the default identity those are the primary key then. A source that
reads the WAL late (down, or behind) must key each row by its own columns, not by the table's
current primary key (issue: a renamed key column collapsed every row onto ``{"order_id": null}``).
A row no key can be found for (written while the table had none) goes to the dead letters
alone, naming its table: never published under an empty or null key, where all such rows would
collapse onto one prediction.
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from rowcast.connectors.lag import slot_lag
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import current_wal_lsn
from rowcast.core.dead_letter import DeadLetter
from rowcast.ops.pipeline import Pipeline
from tests.helpers.diagnostics import logs
from tests.helpers.kafka_reading import drain, drain_rows
from tests.helpers.learning import fast
from tests.helpers.sources import run_source_past
from tests.helpers.tables import watch
from tests.helpers.waiting import wait_until


def setup(settings, conn) -> None:
    init_database(conn, settings)
    conn.execute("DELETE FROM rowcast.deployments")


def deploy(conn, name: str, table: str, features, target: str) -> None:
    conn.execute("SELECT rowcast.deploy(%s, %s, %s, %s, %s, p_backfill => false)",
                 (name, table, target, list(features), "linear_regression"))


def pks(conn, deployment: str) -> list[dict]:
    return [r[0] for r in conn.execute(
        "SELECT pk FROM rowcast.predictions WHERE deployment = %s", (deployment,))]


def alive(pipeline) -> bool:
    state = pipeline.alive()
    assert all(state.values()), (state, logs(pipeline))
    return True


def slot_caught_up(settings, conn) -> bool:
    return slot_lag(conn, settings.slot_name).behind_bytes < 100_000


def source_letters(settings, table: str, expected: int, timeout_s: float = 60.0
                   ) -> list[DeadLetter]:
    letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, expected,
                                                         timeout_s=timeout_s)]
    return [le for le in letters if le.stage == "source" and le.context.get("table") == table]


# ------------------------------------------------------------------------- whole pipeline

@pytest.mark.timeout(300)
def test_a_source_behind_a_key_column_rename_keys_each_row_by_its_own_value(
        settings, pg_conn, tmp_path):
    """The source was down while a migration renamed the primary key column: rows committed
    before the rename are keyed by their own key values (under the name they had then)."""
    settings = fast(settings)
    setup(settings, pg_conn)
    s = uuid.uuid4().hex[:6]
    name, table = f"lagk_{s}", f"public.lagk_{s}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    deploy(pg_conn, name, table, ["x"], "y")
    with Pipeline(settings, tmp_path / "logs", ("worker", "sink")) as pipeline:
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 1, NULL)")
        pg_conn.execute(f"INSERT INTO {table} VALUES (2, 2, NULL)")
        pg_conn.execute(f"INSERT INTO {table} VALUES (3, 3, NULL)")
        pg_conn.execute(f"ALTER TABLE {table} RENAME COLUMN id TO order_id")
        pg_conn.execute(f"INSERT INTO {table} VALUES (4, 4, NULL)")
        pipeline.start_one("source")
        on_topic = drain(settings, settings.predictions_topic(name), 4, timeout_s=90)
        keys = [orjson.loads(m.key) for m in on_topic]
        wait_until(lambda: alive(pipeline) and slot_caught_up(settings, pg_conn), timeout_s=60)
        wait_until(lambda: len(pks(pg_conn, name)) >= 4, timeout_s=30,
                   message=lambda: f"stored keys {pks(pg_conn, name)}; topic keys {keys}")
        stored = pks(pg_conn, name)
        assert len({orjson.dumps(k) for k in keys}) == 4, keys
        assert len(stored) == 4, stored
        assert sorted(next(iter(k.values())) for k in stored) == [1, 2, 3, 4], stored
        assert all(None not in k.values() for k in stored), stored


@pytest.mark.timeout(300)
def test_rows_inserted_while_the_primary_key_is_dropped_are_not_collapsed(
        settings, pg_conn, tmp_path):
    """Rows written while the table had no primary key have no key: each goes to the dead
    letters (naming the table), none is stored under an empty key; the rest keeps scoring."""
    settings = fast(settings)
    setup(settings, pg_conn)
    s = uuid.uuid4().hex[:6]
    name, bare, table = f"nopk_{s}", f"nopk_{s}", f"public.nopk_{s}"
    pg_conn.execute(f"CREATE TABLE {table} (id int, x float8, y float8, "
                    f"CONSTRAINT nopk_{s}_pkey PRIMARY KEY (id))")
    deploy(pg_conn, name, table, ["x"], "y")
    ctl = f"public.ctl_{s}"
    pg_conn.execute(f"CREATE TABLE {ctl} (id int PRIMARY KEY, x float8, y float8)")
    deploy(pg_conn, f"ctl_{s}", ctl, ["x"], "y")
    with Pipeline(settings, tmp_path / "logs", ("source", "worker", "sink")) as pipeline:
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 1, NULL)")
        wait_until(lambda: alive(pipeline) and len(pks(pg_conn, name)) >= 1, timeout_s=90,
                   message=lambda: logs(pipeline))
        # a migration rebuilds the key (e.g. to change its index)
        pg_conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT nopk_{s}_pkey")
        pg_conn.execute(f"INSERT INTO {table} VALUES (2, 2, NULL)")
        pg_conn.execute(f"INSERT INTO {table} VALUES (3, 3, NULL)")
        # the source decodes those while the table has no key
        wait_until(lambda: alive(pipeline) and slot_caught_up(settings, pg_conn), timeout_s=60)
        dead = source_letters(settings, bare, 2)
        wait_until(lambda: len(pks(pg_conn, name)) + len(dead) >= 3, timeout_s=20,
                   message=lambda: f"while the table has no primary key: rowcast.predictions "
                                   f"keys {pks(pg_conn, name)}; dead letters {len(dead)}")
        pg_conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        pg_conn.execute(f"INSERT INTO {table} VALUES (4, 4, NULL)")
        pg_conn.execute(f"INSERT INTO {ctl} VALUES (1, 1, NULL)")
        wait_until(lambda: {1} <= {p.get("id") for p in pks(pg_conn, f"ctl_{s}")},
                   timeout_s=60, message=lambda: logs(pipeline))
        wait_until(lambda: alive(pipeline) and slot_caught_up(settings, pg_conn), timeout_s=60)
        wait_until(lambda: 4 in {p.get("id") for p in pks(pg_conn, name)}, timeout_s=60,
                   message=lambda: str(pks(pg_conn, name)))
        stored = pks(pg_conn, name)
        dead = source_letters(settings, bare, 2, timeout_s=5)
        # each row: one prediction under its own key, or a dead letter
        assert len(stored) + len(dead) >= 4, (stored, dead)
        assert all(p.get("id") is not None for p in stored), stored
        assert sorted(p["id"] for p in stored) == [1, 4], stored
        assert len(dead) == 2, dead
        for letter in dead:
            assert letter.reason == "no_key", letter
            assert bare in letter.error and "\n" not in letter.error, letter.error
            assert orjson.loads(letter.value)["after"]["id"] in ("2", "3"), letter.value


# ------------------------------------------------------------------------- the source alone

def test_a_composite_key_keeps_primary_key_order(settings, pg_conn):
    """The WAL's flags list key columns in table order; the record key keeps the primary key's
    order (Debezium's, and what topics already hold)."""
    table, topic = watch(settings, pg_conn, "(a int, b text, x float8, PRIMARY KEY (b, a))")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1, 'one', 0.5)")
    run_source_past(settings, pg_conn, current_wal_lsn(pg_conn))
    rows = drain_rows(settings, topic, 1)
    assert [r.key for r in rows] == [b'{"b":"one","a":1}']


def test_replica_identity_full_behind_a_key_rename_dead_letters_only_the_unkeyable_rows(
        settings, pg_conn):
    """REPLICA IDENTITY FULL flags every column: the key is the catalog's primary key, used only
    when the row has all its columns; a row written before the key column's rename has not."""
    table, topic = watch(settings, pg_conn, "(id int PRIMARY KEY, x float8)")
    pg_conn.execute(f"ALTER TABLE public.{table} REPLICA IDENTITY FULL")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (1, 0.5)")
    pg_conn.execute(f"ALTER TABLE public.{table} RENAME COLUMN id TO order_id")
    pg_conn.execute(f"INSERT INTO public.{table} VALUES (2, 1.5)")
    pg_conn.execute(f"UPDATE public.{table} SET x = 2.5 WHERE order_id = 2")
    run_source_past(settings, pg_conn, current_wal_lsn(pg_conn))
    rows = drain_rows(settings, topic, 2)
    assert [(r.value["op"], r.key_doc) for r in rows] == \
        [("c", {"order_id": 2}), ("u", {"order_id": 2})]
    letters = source_letters(settings, table, 1)
    assert len(letters) == 1, letters
    assert letters[0].reason == "no_key" and f"public.{table}" in letters[0].error
    assert "\n" not in letters[0].error
    assert orjson.loads(letters[0].value)["after"] == {"id": "1", "x": "0.5"}
