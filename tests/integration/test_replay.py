"""`rowcast backfill NAME --version V`: rows scored with a chosen version, tagged, never served
or learned."""

from __future__ import annotations

import pytest
from river import linear_model, preprocessing

from rowcast.connectors import versions
from rowcast.connectors.schema import init_database
from rowcast.connectors.versions import Checkpoint
from rowcast.models.snapshot import dump_snapshot, signing_key
from tests.helpers.cli import rowcast_cli
from tests.helpers.tables import deployed_xy_table, insert_xy

pytestmark = pytest.mark.integration


def fitted(slope: float):
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    for i in range(300):
        model.learn_one({"x": float(i % 10)}, slope * (i % 10))
    return model


def test_a_replay_scores_every_row_with_the_chosen_version_and_nothing_else(settings, pg_conn):
    init_database(pg_conn, settings)
    table = deployed_xy_table(settings, pg_conn, "replayed", "replay")
    insert_xy(pg_conn, table, range(1, 41), label=lambda i: None)
    d = pg_conn.execute("SELECT version, (extract(epoch FROM created_at) * 1000000)::bigint "
                        "FROM rowcast.deployments WHERE name = 'replayed'").fetchone()
    generation = f"{d[1]}.{d[0]}"
    key = signing_key(settings)
    made = {}
    for slope in (1.0, 5.0):
        model = fitted(slope)
        with pg_conn.transaction():
            made[slope] = versions.write(pg_conn, Checkpoint(
                "replayed", 0, generation, "linear_regression",
                dump_snapshot({"estimator": model}, key), 300, {}, {}, 0), keep_snapshots=5)
    predictions_before = pg_conn.execute(
        "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'replayed'").fetchone()[0]
    events_before = pg_conn.execute("SELECT count(*) FROM rowcast.model_events WHERE "
                                    "deployment = 'replayed'").fetchone()[0]

    done = rowcast_cli(settings, "backfill", "replayed", "--version", str(made[1.0]))
    assert done.returncode == 0, done.stderr
    assert "replayed 40 rows of replayed with version" in done.stdout

    rows = pg_conn.execute(
        "SELECT (pk->>'id')::int, score, version, replay_id FROM rowcast.replay_predictions "
        "WHERE deployment = 'replayed' ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == list(range(1, 41))
    assert {r[2] for r in rows} == {made[1.0]} and len({r[3] for r in rows}) == 1
    expected = fitted(1.0)
    for i, score, _v, _r in rows:
        assert score == pytest.approx(expected.predict_one({"x": float(i)}), rel=1e-12)
    # nothing served, stored as a prediction or learned: no Kafka record, no new version
    assert pg_conn.execute("SELECT count(*) FROM rowcast.predictions WHERE deployment = "
                           "'replayed'").fetchone()[0] == predictions_before
    assert pg_conn.execute("SELECT max(version) FROM rowcast.model_versions WHERE deployment = "
                           "'replayed'").fetchone()[0] == made[5.0]
    event = pg_conn.execute("SELECT kind, version, detail FROM rowcast.model_events WHERE "
                            "deployment = 'replayed' ORDER BY id DESC LIMIT 1").fetchone()
    assert event[0] == "replay" and event[1] == made[1.0] and event[2]["rows"] == 40
    assert pg_conn.execute("SELECT count(*) FROM rowcast.model_events WHERE deployment = "
                           "'replayed'").fetchone()[0] == events_before + 1

    missing = rowcast_cli(settings, "backfill", "replayed", "--version", "99")
    assert missing.returncode == 2 and "has no model version 99" in missing.stderr
