"""Names ``rowcast.deploy`` must refuse, and what a name used before must not keep.

A table's change topic is ``<prefix>.<safe(schema)>.<safe(table)>`` (core/settings.py), so
different tables can map to one topic ("a b" and "a_b"), or to topics Kafka refuses to hold
side by side (it reads '.' and '_' alike: "k.x" and "k_x"); a table in schema ``predictions``
or ``labels`` gets a topic the sink or the learner reads as a deployment's own. A shared topic
mixes two tables' rows; a refused one stops the source and the worker for every deployment.
``rowcast.deploy`` refuses such a table (or deployment name) up front, in one line."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from kafka import KafkaAdminClient
from psycopg import sql

from rowcast.connectors.pg_sink import upsert
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import published_tables
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import _topic_safe
from tests.helpers.cli import deploy_cli


def _sfx() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def db(settings, pg_conn) -> psycopg.Connection:
    init_database(pg_conn, settings)
    return pg_conn


def _create_xy(conn, schema: str, table: str) -> str:
    """CREATE schema.table (id int PRIMARY KEY, x float8, y float8); its SQL name, quoted only
    where needed (as rowcast.deploy's messages name it)."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    ident = sql.Identifier(schema, table)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, x float8, y float8)").format(ident))
    return conn.execute("SELECT quote_ident(%s) || '.' || quote_ident(%s)",
                        (schema, table)).fetchone()[0]


def _deploy(conn, name: str, table: str, labels: str | None = None):
    return conn.execute(
        "SELECT name FROM rowcast.deploy(%s, %s, 'y', ARRAY['x'], p_backfill => false, "
        "p_labels_table => %s, p_labels_key => %s)",
        (name, table, labels, "id" if labels else None)).fetchone()


def _refused(conn, name: str, table: str, labels: str | None = None) -> str:
    """The one-line RC001 message of a refused deploy, which must leave the deployment of that
    name (if any) as it was."""
    def row():
        return conn.execute("SELECT d::text FROM rowcast.deployments d WHERE name = %s",
                            (name,)).fetchall()
    before = row()
    with pytest.raises(psycopg.Error) as refused:
        _deploy(conn, name, table, labels)
    assert refused.value.sqlstate == "RC001", refused.value
    message = refused.value.diag.message_primary
    assert "\n" not in message, message
    assert row() == before, message
    return message


def _fold(conn, schema: str, table: str) -> str:
    return conn.execute("SELECT rowcast._topic_fold(%s, %s)", (schema, table)).fetchone()[0]


# --- the SQL spelling of a topic name is the Python one --------------------------------------

TRICKY = ["a b", "a_b", "日本", "中国", "Süd", "S_d", 'a"b', "a'b", "public.a", "a.b", "k-x",
          "tab\there", "new\nline", "e\u0301", "😀", "ß", "İstanbul", "A-Z.0_9", "[x]", "\\",
          "%s", "a\u00a0b", "x" * 63, "-", ".", "_"]


def test_sql_and_python_agree_on_a_tables_topic_name(db):
    got = {name: db.execute("SELECT rowcast._topic_safe(%s)", (name,)).fetchone()[0]
           for name in TRICKY}
    assert got == {name: _topic_safe(name) for name in TRICKY}
    for schema, table in [("public", "a.b"), ("public.a", "b"), ("日本", "k x")]:
        assert _fold(db, schema, table) == (
            f"{_topic_safe(schema)}.{_topic_safe(table)}".replace(".", "_"))


# --- 1. different tables whose change topics are one (or one to Kafka) ------------------------

COLLIDING = [
    pytest.param(("public", "a b_{s}"), ("public", "a_b_{s}"), id="space-vs-underscore"),
    pytest.param(("public", "日本_{s}"), ("public", "中国_{s}"), id="two-cjk-names"),
    pytest.param(("public", "Süd_{s}"), ("public", "S_d_{s}"), id="umlaut-vs-underscore"),
    pytest.param(("public", 'a"b_{s}'), ("public", "a'b_{s}"), id="two-quotes"),
    pytest.param(("public.a_{s}", "b"), ("public", "a_{s}.b"), id="dot-in-schema-vs-in-table"),
    pytest.param(("public", "k.{s}"), ("public", "k_{s}"), id="kafka-dot-vs-underscore"),
]


@pytest.mark.parametrize("first, second", COLLIDING)
def test_a_table_whose_change_topic_collides_with_a_deployed_one_is_refused(db, first, second):
    s = _sfx()
    a = _create_xy(db, *(part.format(s=s) for part in first))
    b = _create_xy(db, *(part.format(s=s) for part in second))
    assert _deploy(db, f"first_{s}", a) == (f"first_{s}",)
    message = _refused(db, f"second_{s}", b)
    assert a in message and b in message and "rename one" in message, message
    # and as the labels table of a deployment on an unrelated table
    plain = _create_xy(db, "public", f"plain_{s}")
    message = _refused(db, f"third_{s}", plain, labels=b)
    assert a in message and b in message and "rename one" in message, message
    # the table already deployed on may of course be deployed on again
    assert _deploy(db, f"again_{s}", a) == (f"again_{s}",)


def test_a_labels_table_colliding_with_its_own_scored_table_is_refused(db):
    s = _sfx()
    dotted = _create_xy(db, "public", f"own.{s}")
    under = _create_xy(db, "public", f"own_{s}")
    message = _refused(db, f"own_{s}", dotted, labels=under)
    assert dotted in message and under in message and "rename one" in message, message


def test_a_labels_table_already_deployed_on_collides_with_a_new_scored_table(db):
    s = _sfx()
    scored = _create_xy(db, "public", f"sc_{s}")
    labels = _create_xy(db, "public", f"lab.{s}")
    clash = _create_xy(db, "public", f"lab_{s}")
    _deploy(db, f"l_{s}", scored, labels=labels)
    message = _refused(db, f"m_{s}", clash)
    assert labels in message and clash in message, message


# --- 2. tables whose topic reads as a deployment's predictions or labels topic ----------------

@pytest.mark.parametrize("schema, kind", [("predictions", "predictions"), ("labels", "labels"),
                                          ("predictions.x", "predictions"),
                                          ("labels.y", "labels")])
def test_a_table_in_schema_predictions_or_labels_is_refused(db, schema, kind):
    """predictions."d" has the change topic <prefix>.predictions.d: the sink read its change
    events as deployment d's predictions (dead letters), and they collide with d's own."""
    s = _sfx()
    clash = _create_xy(db, schema, f"d_{s}")
    message = _refused(db, f"e_{s}", clash)
    assert message.startswith(f"table {clash} cannot be deployed on") and \
        f"{kind} topic" in message, message
    plain = _create_xy(db, "public", f"p_{s}")
    message = _refused(db, f"e_{s}", plain, labels=clash)
    assert message.startswith(f"labels table {clash} cannot be deployed on"), message


def test_a_deployment_name_whose_topics_collide_with_a_deployed_tables_is_refused(db):
    """predictions_q<s>.x has the change topic <prefix>.predictions_q<s>.x, which Kafka cannot
    hold beside <prefix>.predictions.q<s>_x, the predictions topic of a deployment q<s>_x
    (and labels_q<s>.z beside <prefix>.labels.q<s>_z)."""
    s = "q" + _sfx()
    in_predictions = _create_xy(db, f"predictions_{s}", "x")
    in_labels = _create_xy(db, f"labels_{s}", "z")
    plain = _create_xy(db, "public", f"n_{s}")
    _deploy(db, f"on_p_{s}", in_predictions)
    _deploy(db, f"on_l_{s}", in_labels)
    for name, kind, taken in ((f"{s}_x", "predictions", in_predictions),
                              (f"{s}_z", "labels", in_labels)):
        message = _refused(db, name, plain)
        assert message.startswith(f"deployment name '{name}'") and f"{kind} topic" in message \
            and taken in message and f"'on_{kind[0]}_{s}'" in message, message
    # the other way round: the deployments first, then the tables
    db.execute("SELECT rowcast.undeploy(%s)", (f"on_p_{s}",))
    db.execute("SELECT rowcast.undeploy(%s)", (f"on_l_{s}",))
    _deploy(db, f"{s}_x", plain)
    _deploy(db, f"{s}_z", plain)
    for taken, name, kind in ((in_predictions, f"{s}_x", "predictions"),
                              (in_labels, f"{s}_z", "labels")):
        message = _refused(db, f"late_{s}", taken)
        assert message.startswith(f"table {taken}") and f"deployment '{name}'" in message \
            and f"{kind} topic" in message, message
        # and a deployment's own table against its own topics
        message = _refused(db, name, taken)
        assert message.startswith(f"table {taken}") and f"deployment '{name}'" in message, message


# --- 3. long names: rowcast.<name>_scored must fit PostgreSQL's 63 bytes -----------------------

def test_deployment_names_are_at_most_56_characters_so_each_keeps_its_own_view(db):
    s = _sfx()
    t1 = _create_xy(db, "public", f"long_a_{s}")
    t2 = _create_xy(db, "public", f"long_b_{s}")
    a = ("l" + s + "x" * 60)[:56]
    b = a[:-1] + "y"
    _deploy(db, a, t1)
    _deploy(db, b, t2)
    views = sorted(r[0] for r in db.execute(
        "SELECT viewname FROM pg_views WHERE schemaname = 'rowcast' AND viewname LIKE %s",
        (a[:20] + "%",)))
    assert views == sorted([f"{a}_scored", f"{b}_scored"]), views
    for name in (a + "_sc", "x" * 57, "x" * 63, "x" * 64):
        message = _refused(db, name, t1)
        assert message.startswith(f"deployment name '{name}'") and "56" in message, message


def test_the_cli_refuses_a_57_character_name_in_one_line(settings, db):
    table = _create_xy(db, "public", f"cli57_{_sfx()}")
    done = deploy_cli(settings, "n" * 57, "--table", table, "--target", "y", "--no-backfill")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rowcast: deployment name"), done.stderr
    assert "56" in lines[0], lines[0]


# --- 4. a name deployed again after undeploy starts without the old predictions ---------------

def _predict(conn, name: str, table: str, ids, version: int = 7) -> None:
    upsert(conn, [PredictionRecord(name, "linear_regression", version, "public", table, {"id": i},
                                   float(i), float(i), 10 + i, 1_700_000_000_000_000,
                                   1_700_000_000_000_001) for i in ids])


def _predicted(conn, name: str) -> list[tuple[str, int]]:
    return sorted(conn.execute("SELECT source_table, (pk->>'id')::int FROM rowcast.predictions "
                               "WHERE deployment = %s", (name,)).fetchall())


def test_a_name_deployed_again_after_undeploy_does_not_inherit_old_predictions(db):
    s = _sfx()
    plain = f"again_{s}"
    table = _create_xy(db, "public", plain)
    db.execute(f"INSERT INTO {table} SELECT i, i, NULL FROM generate_series(1, 5) i")
    name = f"again_{s}"
    _deploy(db, name, table)
    _predict(db, name, plain, range(1, 6))
    db.execute("SELECT rowcast.undeploy(%s)", (name,))
    assert len(_predicted(db, name)) == 5  # undeploy keeps them (documented)
    db.execute("SELECT rowcast.deploy(%s, %s, 'y', ARRAY['x'], 'hoeffding_tree_regressor')",
               (name, table))
    shown = db.execute(f"SELECT id, rowcast_model_version FROM rowcast.{name}_scored "
                       "WHERE rowcast_prediction IS NOT NULL").fetchall()
    assert (_predicted(db, name), shown) == ([], []), \
        "the new deployment shows the old model's predictions"


def test_a_redeploy_on_the_same_table_keeps_the_predictions(db):
    s = _sfx()
    plain = f"keep_{s}"
    table = _create_xy(db, "public", plain)
    name = f"keep_{s}"
    _deploy(db, name, table)
    _predict(db, name, plain, range(1, 4))
    db.execute("SELECT rowcast.deploy(%s, %s, 'y', ARRAY['x'], 'hoeffding_tree_regressor', "
               "p_backfill => false)", (name, table))
    assert _predicted(db, name) == [(plain, 1), (plain, 2), (plain, 3)]


# --- 5. a name redeployed onto another table leaves the old one behind ------------------------

def test_redeploying_a_name_onto_another_table_unpublishes_the_old_one(settings, db):
    s = _sfx()
    old, new, shared = f"old_{s}", f"new_{s}", f"shared_{s}"
    t_old, t_new, t_shared = (_create_xy(db, "public", t) for t in (old, new, shared))
    t_labels = _create_xy(db, "public", f"lab_{s}")
    _deploy(db, "moving", t_old, labels=t_labels)
    _deploy(db, "staying", t_shared)
    _deploy(db, "moving_too", t_shared)
    _predict(db, "moving", old, range(1, 4))
    _predict(db, "moving_too", shared, range(1, 4))
    _deploy(db, "moving", t_new)
    _deploy(db, "moving_too", t_new)
    # read by no deployment any more: the old table and the old labels table; still read: shared
    assert published_tables(db, settings.publication_name) == {("public", new),
                                                               ("public", shared)}
    # the name's predictions are now of the new table only
    assert _predicted(db, "moving") == []
    assert _predicted(db, "moving_too") == []


# --- end to end: the CLI refuses the second of two colliding tables, leaving nothing ----------

def _topics(settings) -> set[str]:
    admin = KafkaAdminClient(**settings.kafka_client_config())
    try:
        return {t for t in admin.list_topics() if t.startswith(settings.topic_prefix + ".")}
    finally:
        admin.close()


def test_the_cli_refuses_a_table_whose_topic_kafka_would_refuse(settings, db):
    """public."k.<s>" and public."k_<s>": Kafka refuses the second topic (it reads '.' as
    '_'), which made the source and the worker exit for every deployment."""
    s = _sfx()
    dotted = _create_xy(db, "public", f"k.{s}")
    under = _create_xy(db, "public", f"k_{s}")
    first = deploy_cli(settings, f"dot_{s}", "--table", dotted, "--target", "y", "--no-backfill")
    assert first.returncode == 0, first.stderr
    before = _topics(settings)
    second = deploy_cli(settings, f"und_{s}", "--table", under, "--target", "y", "--no-backfill")
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip().splitlines() == [
        f"rowcast: table {under} and table {dotted} (deployment 'dot_{s}') would share one "
        f"Kafka change topic (<prefix>.public.k_{s} and <prefix>.public.k.{s}: Kafka reads '.' "
        "and '_' alike): rename one of them"], second.stderr
    assert db.execute("SELECT name FROM rowcast.deployments").fetchall() == [(f"dot_{s}",)]
    assert _topics(settings) == before
    assert ("public", f"k_{s}") not in published_tables(db, settings.publication_name)


def test_deployments_made_before_the_check_whose_topics_collide_show_failed(settings, db):
    # as an earlier rowcast.deploy stored them: "Two Words" and Two_Words share one topic
    from rowcast.ops.monitor import Monitor
    from rowcast.ops.status_screen import render

    s = _sfx()
    _create_xy(db, "public", f"Two Words {s}")
    _create_xy(db, "public", f"Two_Words_{s}")
    fine = _create_xy(db, "public", f"alone_{s}")
    _deploy(db, f"fine_{s}", fine)
    for name, table in ((f"spaced_{s}", f"Two Words {s}"), (f"under_{s}", f"Two_Words_{s}")):
        db.execute("INSERT INTO rowcast.deployments (name, schema_name, table_name, target, "
                   "target_kind, features, model, key_columns) VALUES (%s, 'public', %s, 'y', "
                   "'number', '[[\"x\", \"number\"]]', 'linear_regression', '[\"id\"]')",
                   (name, table))
        db.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(settings.publication_name), sql.Identifier("public", table)))
    monitor = Monitor(settings)
    try:
        sample = monitor.sample()
    finally:
        monitor.close()
    failed = {d["name"]: d["failed"] for d in sample["deployments"]}
    assert failed[f"fine_{s}"] is None
    for name in (f"spaced_{s}", f"under_{s}"):
        assert failed[name]["reason"] == "topic_collision", failed[name]
        assert f"public.Two Words {s} and public.Two_Words_{s}" in failed[name]["error"] \
            or f"public.Two_Words_{s} and public.Two Words {s}" in failed[name]["error"]
        assert f"FAILED {name}: {failed[name]['error']}" in render(sample).splitlines()
