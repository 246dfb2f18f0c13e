"""Bad input becomes a dead letter with its reason; good rows keep flowing; replay after a fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import orjson
import pytest

from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.schema import init_database
from rowcast.core.envelope import SourceInfo, build_value
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.waiting import wait_until


def envelope(table: str, row: dict) -> bytes:
    """A create event committed now, as the CDC source would write it (the worker re-reads
    the deployments before scoring events committed after its last look; a fixed old commit
    time would let the probe below race the redeploy)."""
    now_us = time.time_ns() // 1000
    source = SourceInfo("test", "rowcast", "public", table, 1000 + row["id"], 1, now_us)
    return orjson.dumps(build_value(op="c", before=None, after=row, source=source, tx_order=1,
                                    now_us=now_us))


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rowcast", *args],
                          env={**os.environ, **settings.to_env()}, capture_output=True, text=True,
                          timeout=120)


def scored(pg_conn) -> set[int]:
    return {r[0] for r in pg_conn.execute(
        "SELECT (pk->>'id')::int FROM rowcast.predictions WHERE deployment = 'dlq'")}


@pytest.mark.timeout(240)
def test_garbage_goes_to_the_dlq_with_its_reason_and_good_rows_are_scored(settings, pg_conn, tmp_path):
    settings = settings.model_copy(update={"deployment_refresh_s": 0.5})
    table = f"dlq_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, age int, city text, "
                    "y float8)")
    init_database(pg_conn, settings)
    assert deploy_cli(settings, "dlq", "--table", table, "--target", "y").returncode == 0
    topic = settings.source_topic("public", table)

    rows = {
        1: {"age": 30, "city": "Lyon", "y": 1.0},
        2: {"age": "old", "city": "Oslo", "y": 1.0},      # a string where a number belongs
        3: {"age": 40, "city": "Lima", "y": 2.0},
        4: {"age": "NaN", "city": "Lyon", "y": 1.0},      # Debezium's NaN
        5: {"age": "Infinity", "city": "Lyon", "y": 1.0},
        6: {"age": 50, "city": "x" * 5000, "y": 1.0},     # huge text as a category
        7: {"age": 20, "city": "Atlantis", "y": 3.0},     # a category never seen: just scored
        8: {"age": 25, "city": "Oslo", "y": "lots"},      # a label of the wrong type
    }
    producer = make_producer(settings)
    for i, row in rows.items():
        producer.send(topic, key=orjson.dumps({"id": i}), value=envelope(table, {"id": i, **row}))
    producer.send(topic, key=b"x", value=b"{not json")
    producer.send(topic, key=b"x", value=b'{"hello": "world"}')
    producer.flush()

    with Pipeline(settings, tmp_path / "logs", ("worker", "learner", "sink")) as pipeline:
        letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 7)]
        wait_until(lambda: scored(pg_conn) == {1, 3, 7, 8}, timeout_s=60,
                   message=lambda: f"{scored(pg_conn)}\n{pipeline.log_tail('worker')}")
        assert all(pipeline.alive().values())

        reasons = sorted((le["stage"], le["reason"]) for le in letters)
        assert reasons == [("score", "bad_envelope")] * 2 + [("score", "bad_feature")] * 4 + [
            ("score", "bad_label")]
        garbage = next(le for le in letters if le["value"]["data"] == "{not json")
        assert garbage["origin"]["topic"] == topic and garbage["error"].startswith("not JSON")
        by_id = {orjson.loads(le["key"]["data"])["id"]: le for le in letters
                 if le["reason"] != "bad_envelope"}
        assert "age" in by_id[2]["error"] and "expected a number" in by_id[2]["error"]
        assert "NaN and infinity" in by_id[4]["error"] and "NaN and infinity" in by_id[5]["error"]
        assert "too long for a category" in by_id[6]["error"]
        assert "y" in by_id[8]["error"]
        # the original record travels with the letter, with where it came from
        assert by_id[2]["origin"]["topic"] == topic and "old" in by_id[2]["value"]["data"]

        listed = cli(settings, "dlq", "list", "--reason", "bad_feature")
        assert listed.returncode == 0 and listed.stdout.count("bad_feature") == 4

        # the fix: the deployment stops using age; a probe row shows the worker has it
        assert deploy_cli(settings, "dlq", "--table", table, "--target", "y", "--features",
                          "city", "--no-backfill").returncode == 0
        producer.send(topic, key=b'{"id": 99}',
                      value=envelope(table, {"id": 99, "age": "bad", "city": "Oslo", "y": 1.0}))
        producer.flush()
        wait_until(lambda: 99 in scored(pg_conn), timeout_s=60,
                   message=lambda: pipeline.log_tail("worker"))
        replayed = cli(settings, "dlq", "replay", "--reason", "bad_feature", "--yes")
        assert replayed.returncode == 0 and "replayed 4 record(s)" in replayed.stdout
        wait_until(lambda: {2, 4, 5} <= scored(pg_conn), timeout_s=60,
                   message=lambda: pipeline.log_tail("worker"))
        # still too long: refused again, with its reason
        again = drain(settings, settings.dlq_topic, 8)
        assert sum(1 for r in again if b"too long for a category" in r.value) == 2
        assert 6 not in scored(pg_conn)
    producer.close()
