"""A worker survives what it cannot score (issue 13, items 3, 4 and 10a), on the real services.

A malformed envelope, a model that raises on one row and a deployment whose custom model
cannot be imported each put their records on the dead-letter topic with a reason, while the
rows after them are scored by every other deployment, and the failed deployment shows in
``rowcast status``. A worker started before ``rowcast init`` waits and then starts.
"""

from __future__ import annotations

import time
import urllib.request
import uuid

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import drop_slot_and_publication
from rowcast.core.envelope import SourceInfo, build_value
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.diagnostics import logs
from tests.helpers.kafka_reading import drain
from tests.helpers.waiting import wait_until

FRAGILE = "tests.helpers.fragile_models:make"  # raises on x == 13
MISSING = "tests.no_such_module_anywhere:make"  # an allowed module that does not exist


def envelope(table: str, row: dict, lsn: object | None = None) -> bytes:
    """A create event committed now, as the CDC source writes it (``lsn`` overrides it)."""
    now_us = time.time_ns() // 1000
    value = build_value(op="c", before=None, after=row, tx_order=1, now_us=now_us,
                        source=SourceInfo("test", "rowcast", "public", table, 1000 + row["id"],
                                          1, now_us))
    if lsn is not None:
        value["source"]["lsn"] = lsn
    return orjson.dumps(value)


def scored(conn: psycopg.Connection, deployment: str) -> set[int]:
    return {r[0] for r in conn.execute(
        "SELECT (pk->>'id')::int FROM rowcast.predictions WHERE deployment = %s", (deployment,))}


@pytest.mark.timeout(300)
def test_bad_records_and_an_unbuildable_model_go_to_the_dlq_and_scoring_goes_on(
        settings, pg_conn, tmp_path):
    settings = settings.model_copy(update={"deployment_refresh_s": 0.5})
    table = f"resil_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, x float8, y float8)")
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")  # only this test's deployments run
    for name, model in (("good", "linear_regression"), ("fragile", FRAGILE)):
        done = deploy_cli(settings, name, "--table", table, "--target", "y", "--model", model,
                          "--no-backfill")
        assert done.returncode == 0, done.stderr
    # the SQL function cannot import Python: it accepts a module that does not exist
    pg_conn.execute("SELECT rowcast.deploy('broken', %s, 'y', ARRAY['x'], %s)",
                    (f"public.{table}", MISSING))
    # writing a deployment row must not grant code execution: os:abort is never imported/called
    # (rowcast.deploy refuses it up front; write access to rowcast.deployments does not)
    pg_conn.execute("SELECT rowcast.deploy('evil', %s, 'y', ARRAY['x'])", (f"public.{table}",))
    pg_conn.execute("UPDATE rowcast.deployments SET model = 'os:abort' WHERE name = 'evil'")
    topic = settings.source_topic("public", table)

    producer = make_producer(settings)

    def send(i: int, x: float, lsn: object | None = None) -> None:
        producer.send(topic, key=orjson.dumps({"id": i}),
                      value=envelope(table, {"id": i, "x": x, "y": 2 * x}, lsn))

    send(1, 1.0)
    send(2, 2.0, lsn="0/16B3748")  # int(source["lsn"]) raises ValueError in parse_event
    send(3, 13.0)                  # the fragile model raises on it
    send(4, 4.0)
    producer.flush()

    with Pipeline(settings, tmp_path / "logs", ("worker", "learner", "sink")) as pipeline:
        wait_until(lambda: scored(pg_conn, "good") == {1, 3, 4}
                   and scored(pg_conn, "fragile") == {1, 4}, timeout_s=120,
                   message=lambda: f"{scored(pg_conn, 'good')} {scored(pg_conn, 'fragile')}\n"
                                   + logs(pipeline))
        # rows after the bad ones keep coming through the same worker
        send(5, 5.0)
        producer.flush()
        wait_until(lambda: 5 in scored(pg_conn, "good") and 5 in scored(pg_conn, "fragile"),
                   timeout_s=60, message=lambda: logs(pipeline))
        assert scored(pg_conn, "broken") == set()

        letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 10)]
        reasons = sorted(le["reason"] for le in letters)
        # 4 scorable rows refused by each of the two unbuildable deployments
        assert reasons == ["bad_envelope", *["model_unavailable"] * 8, "score_failed"], reasons
        bad_lsn = next(le for le in letters if le["reason"] == "bad_envelope")
        assert bad_lsn["origin"]["topic"] == topic and "0/16B3748" in bad_lsn["error"]
        failed_row = next(le for le in letters if le["reason"] == "score_failed")
        assert orjson.loads(failed_row["key"]["data"]) == {"id": 3}
        assert failed_row["error"].startswith("fragile: ValueError")
        unavailable = [le for le in letters if le["reason"] == "model_unavailable"]
        assert {orjson.loads(le["key"]["data"])["id"] for le in unavailable} == {1, 3, 4, 5}
        assert all(("broken" in le["error"] and "cannot import" in le["error"])
                   or ("evil" in le["error"] and "not allowed" in le["error"])
                   for le in unavailable)

        # the operator sees which deployment failed and why: status, its JSON, the metric
        status = rowcast_cli(settings, "status", "--samples", "1")
        assert status.returncode == 0, status.stderr
        assert "broken" in status.stdout and "FAILED" in status.stdout
        assert "cannot import module" in status.stdout
        doc = orjson.loads(rowcast_cli(settings, "status", "--json", "--samples", "1").stdout)
        states = {d["name"]: d["failed"] for d in doc["deployments"]}
        assert states["good"] is None and states["fragile"] is None
        assert states["broken"]["reason"] == "model_unavailable"
        assert "cannot import module" in states["broken"]["error"]
        assert states["evil"]["reason"] == "model_unavailable"
        assert "is not allowed here" in states["evil"]["error"]
        page = urllib.request.urlopen(
            f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", timeout=10).read().decode()
        assert 'rowcast_deployment_failed{deployment="broken",reason="model_unavailable"} 1.0' \
            in page

        assert all(pipeline.alive().values()), logs(pipeline)
    producer.close()


@pytest.mark.timeout(300)
def test_a_worker_started_before_init_waits_for_the_schema_and_then_scores(
        settings, pg_conn, tmp_path):
    database = f"early_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f'CREATE DATABASE "{database}"')
    params = conninfo_to_dict(settings.postgres_dsn.get_secret_value())
    dsn = make_conninfo(**{**params, "dbname": database})
    settings = settings.model_copy(update={"postgres_dsn": SecretStr(dsn),
                                           "deployment_refresh_s": 0.5})
    try:
        with Pipeline(settings, tmp_path / "logs", ("worker",)) as pipeline:
            wait_until(lambda: "rowcast init" in pipeline.log_tail("worker"), timeout_s=60,
                       message=lambda: pipeline.log_tail("worker"))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE public.early (id int PRIMARY KEY, x float8, y float8)")
                init_database(conn, settings)
                assert pipeline.alive()["worker"], pipeline.log_tail("worker")
                done = deploy_cli(settings, "early", "--table", "early", "--target", "y",
                                  "--no-backfill")
                assert done.returncode == 0, done.stderr
            wait_until(lambda: "scoring 1 deployment" in pipeline.log_tail("worker"),
                       timeout_s=60, message=lambda: pipeline.log_tail("worker"))
            producer = make_producer(settings)
            producer.send(settings.source_topic("public", "early"), key=b'{"id": 1}',
                          value=envelope("early", {"id": 1, "x": 1.0, "y": 2.0}))
            producer.flush()
            producer.close()
            [prediction] = drain(settings, settings.predictions_topic("early"), 1, timeout_s=90)
            assert orjson.loads(prediction.value)["deployment"] == "early"
            log = pipeline.log_tail("worker", lines=400)
            assert "Traceback" not in log and "UndefinedTable" not in log, log
            assert log.count("rowcast init") == 1, log  # said once, not on every poll
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop_slot_and_publication(conn, settings.slot_name, settings.publication_name)
        pg_conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
