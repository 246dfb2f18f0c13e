"""Challengers, drift settings and promotion requests through plain SQL (and the checks)."""

from __future__ import annotations

import psycopg
import pytest

from rowcast.connectors import operations
from rowcast.connectors.schema import init_database
from rowcast.models.operations import ModelEvent
from tests.helpers.tables import deployed_xy_table

pytestmark = pytest.mark.integration


@pytest.fixture
def deployed(settings, pg_conn):
    init_database(pg_conn, settings)
    deployed_xy_table(settings, pg_conn, "ops_sql", "ops")
    yield "ops_sql"
    pg_conn.execute("SELECT rowcast.undeploy('ops_sql')")


def test_challengers_are_checked_stored_and_gone_with_the_deployment(pg_conn, deployed):
    pg_conn.execute("SELECT rowcast.add_challenger('ops_sql', 'tree', "
                    "'hoeffding_tree_regressor', auto_promote => true)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown model nope"):
        pg_conn.execute("SELECT rowcast.add_challenger('ops_sql', 'x', 'nope')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="needs a regression model"):
        pg_conn.execute("SELECT rowcast.add_challenger('ops_sql', 'x', 'logistic_regression')")
    with pytest.raises(psycopg.errors.NoDataFound, match="no deployment named nobody"):
        pg_conn.execute("SELECT rowcast.add_challenger('nobody', 'x', 'linear_regression')")
    with pytest.raises(psycopg.errors.CheckViolation):
        pg_conn.execute("SELECT rowcast.add_challenger('ops_sql', 'Bad Name', "
                        "'linear_regression')")
    config = operations.read_config(pg_conn, deployed)
    assert (config.detector, config.reaction) == ("adwin", "none")
    assert [(c.name, c.model, c.auto_promote) for c in config.challengers] == [
        ("tree", "hoeffding_tree_regressor", True)]

    pg_conn.execute("SELECT rowcast.set_drift('ops_sql', 'page_hinkley', 'retrain')")
    with pytest.raises(psycopg.errors.CheckViolation):
        pg_conn.execute("SELECT rowcast.set_drift('ops_sql', 'cusum', 'none')")
    assert operations.read_config(pg_conn, deployed).detector == "page_hinkley"

    pg_conn.execute("SELECT rowcast.undeploy('ops_sql')")
    config = operations.read_config(pg_conn, deployed)
    assert config.challengers == () and config.detector == "adwin"


def test_a_promotion_request_is_taken_once_and_events_are_kept(pg_conn, deployed):
    with pytest.raises(psycopg.errors.NoDataFound, match="no challenger named tree"):
        pg_conn.execute("SELECT rowcast.promote('ops_sql', 'tree')")
    pg_conn.execute("SELECT rowcast.add_challenger('ops_sql', 'tree', 'hoeffding_tree_regressor')")
    pg_conn.execute("SELECT rowcast.promote('ops_sql', 'tree')")
    with pg_conn.transaction():
        assert operations.take_promotion(pg_conn, deployed) == "tree"
    assert operations.take_promotion(pg_conn, deployed) is None

    operations.record_events(pg_conn, deployed, 3, [
        ModelEvent("drift", 1200, None, {"detector": "adwin", "loss_before": 0.1}),
        ModelEvent("promoted", 1500, "tree", {"z": 4.2})])
    events = operations.recent_events(pg_conn, deployed)
    assert [(e[2], e[3], e[4], e[1]) for e in events] == [("promoted", "tree", 1500, 3),
                                                          ("drift", None, 1200, 3)]
    assert events[1][5]["loss_before"] == 0.1
    operations.swap_roles(pg_conn, deployed, "tree", "was-champion", "linear_regression")
    assert [(c.name, c.model) for c in operations.read_config(pg_conn, deployed).challengers] == [
        ("was-champion", "linear_regression")]
