"""Deployments through rowcast.deploy(): one validation for the CLI and for plain SQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from rowcast.connectors.pg_sink import upsert
from rowcast.connectors.registry import create_deployment, list_deployments, remove_deployment
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import published_tables
from rowcast.core.errors import ConfigError
from rowcast.core.prediction import PredictionRecord


@pytest.fixture
def odd_table(settings, pg_conn):
    """A table whose name needs quoting everywhere: a quote and a space."""
    init_database(pg_conn, settings)
    name = f'Odd "T" {uuid.uuid4().hex[:6]}'
    pg_conn.execute(psycopg.sql.SQL(
        "CREATE TABLE public.{} (id int PRIMARY KEY, \"a b\" int, city text, amt float8, "
        "vip bool, ts timestamptz, doc jsonb, note text)").format(psycopg.sql.Identifier(name)))
    return name


def test_deploy_by_sql_call_stores_publishes_and_creates_the_view(settings, pg_conn, odd_table):
    quoted = psycopg.sql.Identifier("public", odd_table).as_string(pg_conn)
    row = pg_conn.execute("SELECT name, features, target_kind FROM rowcast.deploy("
                          "'by_sql', %s, 'amt', ARRAY['a b', 'city', 'vip'])", (quoted,)).fetchone()
    assert row == ("by_sql", [["a b", "number"], ["city", "category"], ["vip", "boolean"]], "number")
    assert ("public", odd_table) in published_tables(pg_conn, settings.publication_name)
    assert [d.name for d in list_deployments(pg_conn)].count("by_sql") == 1

    pg_conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (7, 1, 'x', 2.5, true, now(), '[]', 'n')")
                    .format(psycopg.sql.Identifier("public", odd_table)))
    upsert(pg_conn, [PredictionRecord("by_sql", "linear_regression", 1, "public", odd_table,
                                      {"id": 7}, 2.0, 2.0, 10, 1_700_000_000_000_000,
                                      1_700_000_000_000_001)])
    scored = pg_conn.execute("SELECT id, amt, rowcast_score, rowcast_model_version "
                             "FROM rowcast.by_sql_scored").fetchall()
    assert scored == [(7, 2.5, 2.0, 1)]
    # the view lists only the deployment's columns: the app can still drop the others
    pg_conn.execute(psycopg.sql.SQL("ALTER TABLE {} DROP COLUMN note")
                    .format(psycopg.sql.Identifier("public", odd_table)))


def test_redeploying_bumps_the_version(pg_conn, odd_table):
    first = create_deployment(pg_conn, "again", f'public."{odd_table.replace(chr(34), 2 * chr(34))}"',
                              "amt", None, "linear_regression")
    second = create_deployment(pg_conn, "again", f'public."{odd_table.replace(chr(34), 2 * chr(34))}"',
                               "amt", ["a b"], "hoeffding_tree_regressor")
    assert [(f.name, f.kind) for f in first.features] == [  # usable columns, kinds by type
        ("a b", "number"), ("city", "category"), ("vip", "boolean"), ("ts", "timestamp"),
        ("note", "category")]
    assert (second.version, second.model) == (first.version + 1, "hoeffding_tree_regressor")


@pytest.mark.parametrize(("args", "message"), [
    (("Bad", "amt", None, "linear_regression"), "lower-case letters"),
    (("d", "zz", None, "linear_regression"), "target column 'zz' is not in"),
    (("d", "amt", ["amt"], "linear_regression"), "also listed as a feature"),
    (("d", "amt", ["doc"], "linear_regression"), "type rowcast cannot use yet"),
    (("d", "amt", ["nope"], "linear_regression"), "feature column 'nope' is not in"),
    (("d", "city", None, "linear_regression"), "category column, which a regression model"),
    (("d", "amt", None, "gpt"), "unknown model .gpt.; the catalog has: .*hoeffding_tree_classifier"),
    (("d", "amt", ["city", "city"], "linear_regression"), "listed twice"),
])
def test_bad_definitions_are_refused_with_the_reason(pg_conn, odd_table, args, message):
    name, target, features, model = args
    table = f'public."{odd_table.replace(chr(34), 2 * chr(34))}"'
    with pytest.raises(ConfigError, match=message):
        create_deployment(pg_conn, name, table, target, features, model)


def test_unknown_table_is_refused(settings, pg_conn):
    init_database(pg_conn, settings)
    with pytest.raises(ConfigError, match="does not exist"):
        create_deployment(pg_conn, "d", "public.nowhere", "y", None, "linear_regression")
    with pytest.raises(ConfigError, match="give it as table or schema.table"):
        create_deployment(pg_conn, "d", "otherdb.public.nowhere", "y", None, "linear_regression")
    pg_conn.execute("CREATE TABLE IF NOT EXISTS public.scored_here (id int PRIMARY KEY, "
                    "x float8, y float8)")
    with pytest.raises(ConfigError, match='labels table public.nolabels does not exist'):
        create_deployment(pg_conn, "d", "public.scored_here", "y", None, "linear_regression",
                          "nolabels", "id")


def test_undeploy_removes_view_and_unpublishes_the_last_users_table(settings, pg_conn, odd_table):
    quoted = psycopg.sql.Identifier("public", odd_table).as_string(pg_conn)
    for name in ("keep_me", "drop_me"):
        pg_conn.execute("SELECT rowcast.deploy(%s, %s, 'amt')", (name, quoted))
    remove_deployment(pg_conn, "drop_me")
    names = [d.name for d in list_deployments(pg_conn)]
    assert "drop_me" not in names and "keep_me" in names
    assert pg_conn.execute("SELECT to_regclass('rowcast.drop_me_scored')").fetchone()[0] is None
    # another deployment still reads the table: it stays published
    assert ("public", odd_table) in published_tables(pg_conn, settings.publication_name)
    remove_deployment(pg_conn, "keep_me")
    assert ("public", odd_table) not in published_tables(pg_conn, settings.publication_name)
    with pytest.raises(ConfigError, match="no deployment named 'keep_me'"):
        remove_deployment(pg_conn, "keep_me")
