"""Every error ``rowcast deploy`` (and ``SELECT rowcast.deploy``) can give is one line naming
what to fix, never a traceback (issue #13, item 8)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from rowcast.connectors.schema import init_database
from tests.helpers.cli import deploy_cli, rowcast_cli


@pytest.fixture
def mixed_case_table(settings, pg_conn) -> str:
    init_database(pg_conn, settings)
    name = f"Some-Table_{uuid.uuid4().hex[:4]}"
    pg_conn.execute(f'CREATE TABLE public."{name}" (id int PRIMARY KEY, x float8, y float8)')
    # tables PostgreSQL cannot stream, and relations that are not tables
    pg_conn.execute(f'CREATE UNLOGGED TABLE public."{name}_unlogged" (id int PRIMARY KEY, '
                    "x float8, y float8)")
    pg_conn.execute(f'CREATE VIEW public."{name}_view" AS SELECT * FROM public."{name}"')
    pg_conn.execute(f'CREATE MATERIALIZED VIEW public."{name}_matview" AS '
                    f'SELECT * FROM public."{name}"')
    pg_conn.execute(f'CREATE TABLE public."{name}_parts" (id int PRIMARY KEY, x float8, '
                    "y float8) PARTITION BY RANGE (id)")
    pg_conn.execute(f'CREATE TABLE public."{name}_p1" PARTITION OF public."{name}_parts" '
                    "FOR VALUES FROM (0) TO (100)")
    return name


@pytest.mark.parametrize("args, says", [
    (("--table", "{t}", "--target", "y"), "quote it"),                 # the unquoted name
    (("--table", '"{t}"', "--target", "y", "--labels-table", "Bad-Labels", "--labels-key", "id"),
     "quote it"),
    (("--table", "", "--target", "y"), "table"),
    (("--table", "w.x.y.z", "--target", "y"), "schema.table"),
    (("--table", '"{t}"', "--target", "nope"), "target column"),
    (("--table", '"{t}"', "--target", "y", "--features", "x,nope"), "feature column"),
    (("--table", '"{t}"', "--target", "y", "--model", "no_such_model"), "unknown model"),
    (("--table", '"{t}_unlogged"', "--target", "y"), "SET LOGGED"),
    (("--table", '"{t}_view"', "--target", "y"), "is not a table"),
    (("--table", '"{t}_matview"', "--target", "y"), "is not a table"),
    (("--table", '"{t}_p1"', "--target", "y"), "is a partition of"),
])
def test_each_refusal_is_one_line(settings, mixed_case_table, args, says):
    args = tuple(a.format(t=mixed_case_table) for a in args)
    done = deploy_cli(settings, f"d_{uuid.uuid4().hex[:6]}", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("rowcast: ") and says in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def test_the_quoted_name_deploys_and_the_hint_says_how(settings, pg_conn, mixed_case_table):
    done = deploy_cli(settings, "quoted_ok", "--table", f'"{mixed_case_table}"', "--target", "y",
                      "--no-backfill")
    assert done.returncode == 0, done.stderr
    wrong = deploy_cli(settings, "quoted_no", "--table", mixed_case_table, "--target", "y")
    assert f'\'"{mixed_case_table}"\'' in wrong.stderr  # shows the shell-quoted form to type


def test_the_sql_function_refuses_with_rc001_and_the_same_words(settings, pg_conn,
                                                               mixed_case_table):
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy('sqlbad', %s, 'y')", (mixed_case_table,))
    assert refused.value.sqlstate == "RC001"
    assert "quote it" in refused.value.diag.message_primary


def test_a_custom_model_from_a_module_the_operator_did_not_allow_is_refused(settings,
                                                                            mixed_case_table):
    done = deploy_cli(settings, "evil", "--table", f'"{mixed_case_table}"', "--target", "y",
                      "--model", "os:abort")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rowcast: custom model 'os:abort': module 'os' is not allowed here; the operator lists "
        "the modules custom models may come from in ROWCAST_CUSTOM_MODEL_MODULES (now: tests)"]


def test_the_sql_function_refuses_a_module_the_operator_did_not_allow(settings, pg_conn,
                                                                     mixed_case_table):
    """``SELECT rowcast.deploy(..., 'os:abort')`` was accepted (workers refused it later, FAILED
    model_unavailable): the SQL call checks the list ``rowcast init`` stored, by the Python rule
    (the module or a submodule of one listed; ``testsuite`` is not ``tests``)."""
    for model in ("os:abort", "testsuite:make", "os.path:join"):
        with pytest.raises(psycopg.Error) as refused:
            pg_conn.execute("SELECT rowcast.deploy('evil', %s, 'y', NULL, %s)",
                            (f'"{mixed_case_table}"', model))
        assert refused.value.sqlstate == "RC001"
        module = model.partition(":")[0]
        assert refused.value.diag.message_primary == (
            f"custom model '{model}': module '{module}' is not allowed here; the operator lists "
            "the modules custom models may come from in ROWCAST_CUSTOM_MODEL_MODULES (now: tests, "
            "as stored by the last rowcast init)")
    assert pg_conn.execute("SELECT count(*) FROM rowcast.deployments").fetchone()[0] == 0


def test_rowcast_init_stores_the_current_allow_list(settings, pg_conn, mixed_case_table):
    """Re-running init replaces the stored list: what the SQL call checks follows the setting.
    A process's own start (a sink started without the setting) leaves it alone."""
    table = f'"{mixed_case_table}"'
    init_database(pg_conn, settings.model_copy(update={"custom_model_modules": " mypkg, other.sub "}),
                  replace_modules=True)
    init_database(pg_conn, settings.model_copy(update={"custom_model_modules": ""}))  # a sink
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy('d', %s, 'y', NULL, 'tests.unit.custom_models:spend')",
                        (table,))
    assert "(now: mypkg, other.sub, as stored" in refused.value.diag.message_primary
    assert pg_conn.execute("SELECT model FROM rowcast.deploy('d', %s, 'y', NULL, "
                           "'other.sub.models:make')", (table,)).fetchone() == ("other.sub.models:make",)
    assert rowcast_cli(settings.model_copy(update={"custom_model_modules": ""}), "init").returncode == 0
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy('d', %s, 'y', NULL, 'other.sub.models:make')",
                        (table,))
    assert "(now: none, as stored" in refused.value.diag.message_primary
    init_database(pg_conn, settings, replace_modules=True)  # back to this test's own list


@pytest.mark.parametrize("model", ["tests.helpers.fragile_models:make", "tests:make"])
def test_the_sql_function_accepts_a_custom_model_from_an_allowed_module(settings, pg_conn,
                                                                       mixed_case_table, model):
    row = pg_conn.execute("SELECT name, model FROM rowcast.deploy('mine', %s, 'y', NULL, %s)",
                          (f'"{mixed_case_table}"', model)).fetchone()
    assert row == ("mine", model)


@pytest.mark.parametrize("argument", ["p_name", "p_table", "p_target", "p_model"])
def test_a_null_argument_is_refused_with_its_name(settings, pg_conn, mixed_case_table, argument):
    """A NULL target gave the raw not-null violation of rowcast.deployments."""
    args = {"p_name": "nulls", "p_table": f'"{mixed_case_table}"', "p_target": "y",
            "p_model": "linear_regression"}
    args[argument] = None
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy(%(p_name)s, %(p_table)s, %(p_target)s, NULL, "
                        "%(p_model)s)", args)
    assert refused.value.sqlstate == "RC001", refused.value
    message = refused.value.diag.message_primary
    assert message.startswith(f"{argument} must not be NULL") and "\n" not in message, message


def test_a_null_feature_name_is_refused(settings, pg_conn, mixed_case_table):
    """``ARRAY['x', NULL]`` passed every check (NULL = ANY(...) is NULL, not false) and stored
    a feature with no name."""
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy('nulls', %s, 'y', ARRAY['x', NULL])",
                        (f'"{mixed_case_table}"',))
    assert refused.value.sqlstate == "RC001", refused.value
    assert refused.value.diag.message_primary.startswith("p_features must not contain NULL")
    assert pg_conn.execute("SELECT count(*) FROM rowcast.deployments WHERE name = 'nulls'"
                           ).fetchone() == (0,)


@pytest.mark.parametrize("table", ["rowcast.predictions", "rowcast.deployments",
                                   "pg_catalog.pg_class", "information_schema.sql_features"])
def test_rowcasts_own_and_the_system_tables_cannot_be_deployed_on(settings, pg_conn, table):
    """Deploying on rowcast.predictions put it in the publication: each prediction was a new
    row to score, its key nesting the last one's, until a key outgrew the primary key's index
    and stopped the sink. Refused in SQL (and so in the CLI), as a target and as labels."""
    init_database(pg_conn, settings)
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy('loop', %s, 'score', ARRAY['model_version'])",
                        (table,))
    assert refused.value.sqlstate == "RC001"
    assert "cannot be deployed on" in refused.value.diag.message_primary
    done = deploy_cli(settings, "loop", "--table", table, "--target", "score")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert pg_conn.execute("SELECT count(*) FROM pg_publication_tables WHERE schemaname IN "
                           "('rowcast', 'pg_catalog', 'information_schema')").fetchone()[0] == 0


def test_model_versions_of_an_unknown_name_says_there_is_no_such_deployment(settings, pg_conn):
    """It said "'nosuch' has no model versions yet (is rowcast learner running...)", sending
    the user to look at a healthy learner for a typo."""
    from tests.helpers.cli import rowcast_cli

    init_database(pg_conn, settings)
    done = rowcast_cli(settings, "model", "versions", "nosuch")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rowcast: no deployment named 'nosuch' (rowcast deployments lists them)"]
    done = rowcast_cli(settings, "model", "rollback", "nosuch", "0")  # version 0 too
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rowcast: no deployment named 'nosuch' (rowcast deployments lists them)"]


def test_a_generated_column_is_refused_as_feature_or_target_and_left_out_by_default(
        settings, pg_conn):
    # PostgreSQL's logical replication does not send generated columns: a deployment on one
    # would get rows without it, every one of them a dead letter (missing_column)
    init_database(pg_conn, settings)
    table = f"gen_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, a float8, "
                    "b float8 GENERATED ALWAYS AS (a * 2) STORED, y float8, "
                    "z float8 GENERATED ALWAYS AS (a + 1) STORED)")
    for target, features in (("y", ["a", "b"]), ("z", ["a"])):
        with pytest.raises(psycopg.Error) as refused:
            pg_conn.execute("SELECT rowcast.deploy('gen', %s, %s, %s)",
                            (f"public.{table}", target, features))
        assert refused.value.sqlstate == "RC001"
        message = refused.value.diag.message_primary
        assert "generated column" in message and "logical replication" in message, message
    # all usable columns (no list given): the generated ones are not among them
    pg_conn.execute("SELECT rowcast.deploy('gen', %s, 'y', p_backfill => false)",
                    (f"public.{table}",))
    features = pg_conn.execute("SELECT features FROM rowcast.deployments WHERE name = 'gen'"
                               ).fetchone()[0]
    assert [f[0] for f in features] == ["a"]
    # nor may a labels table give its labels, or the key they are for, by a generated column
    pg_conn.execute(f"CREATE TABLE public.{table}_labels (lid int PRIMARY KEY, ref int, "
                    "raw float8, y float8 GENERATED ALWAYS AS (raw / 100) STORED)")
    with pytest.raises(psycopg.Error) as refused:
        pg_conn.execute("SELECT rowcast.deploy('gen_l', %s, 'y', ARRAY['a'], "
                        "p_labels_table => %s, p_labels_key => 'ref')",
                        (f"public.{table}", f"public.{table}_labels"))
    assert refused.value.sqlstate == "RC001"
    assert "generated column" in refused.value.diag.message_primary
