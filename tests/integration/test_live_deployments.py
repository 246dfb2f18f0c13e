"""Running workers follow the registry: new tables, new models, removals, with no restart by hand."""

from __future__ import annotations

import uuid

import pytest

from rowcast.connectors.schema import init_database
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.diagnostics import logs
from tests.helpers.waiting import wait_until


def predictions(conn, deployment: str) -> dict[int, str]:
    return {r[0]: r[1] for r in conn.execute(
        "SELECT (pk->>'id')::int, model FROM rowcast.predictions WHERE deployment = %s",
        (deployment,))}


@pytest.mark.timeout(240)
def test_new_and_changed_deployments_are_picked_up_live(settings, pg_conn, tmp_path):
    settings = settings.model_copy(update={"deployment_refresh_s": 0.5})
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")  # only this test's deployments run
    first, second = (f"live_{uuid.uuid4().hex[:6]}" for _ in range(2))
    for table in (first, second):
        pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    assert deploy_cli(settings, "one", "--table", first, "--target", "y").returncode == 0

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        pg_conn.execute(f"INSERT INTO public.{first} VALUES (1, 1, 2)")
        wait_until(lambda: 1 in predictions(pg_conn, "one"), timeout_s=60,
                   message=lambda: logs(pipeline))

        # a deployment on a table the worker does not consume yet
        assert deploy_cli(settings, "two", "--table", second, "--target", "y").returncode == 0
        pg_conn.execute(f"INSERT INTO public.{second} VALUES (1, 1, 2)")
        wait_until(lambda: 1 in predictions(pg_conn, "two"), timeout_s=90,
                   message=lambda: logs(pipeline))

        # a new model for an existing deployment applies in place
        done = deploy_cli(settings, "one", "--table", first, "--target", "y",
                          "--model", "hoeffding_tree_regressor")
        assert done.returncode == 0
        wait_until(lambda: pg_conn.execute(f"INSERT INTO public.{first} VALUES "
                                           f"((SELECT max(id) + 1 FROM public.{first}), 1, 2)")
                   is not None and "hoeffding_tree_regressor" in predictions(pg_conn, "one").values(),
                   timeout_s=60, interval_s=0.5, message="the new model scores new rows")
        # commit order: a row committed right after a deployment is scored by it
        assert deploy_cli(settings, "three", "--table", first, "--target", "y",
                          "--no-backfill").returncode == 0
        pg_conn.execute(f"INSERT INTO public.{first} VALUES (-1, 1, 2)")
        wait_until(lambda: -1 in predictions(pg_conn, "three"), timeout_s=60,
                   message=lambda: logs(pipeline))
        assert list(predictions(pg_conn, "three")) == [-1]  # --no-backfill: old rows untouched

        assert all(pipeline.alive().values())
        rows = pg_conn.execute(f"SELECT count(*) FROM public.{first}").fetchone()[0]
        # every row inserted while the worker reloaded still got exactly one prediction
        wait_until(lambda: len(predictions(pg_conn, "one")) == rows, timeout_s=30,
                   message=lambda: f"{len(predictions(pg_conn, 'one'))} of {rows} scored\n"
                                   + logs(pipeline))
