"""A bad row inside a change batch goes to the DLQ alone; the rest of its batch is scored; the
row's letter is its own per-row envelope, which ``rowcast dlq replay`` sends back (issue 15)."""

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
from rowcast.core.change_batch import BATCH_HEADER, BATCH_KEY, ChangeBatch
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.waiting import wait_until


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rowcast", *args],
                          env={**os.environ, **settings.to_env()}, capture_output=True, text=True,
                          timeout=120)


def scored(pg_conn) -> set[int]:
    return {r[0] for r in pg_conn.execute(
        "SELECT (pk->>'id')::int FROM rowcast.predictions WHERE deployment = 'dlqb'")}


def batch(table: str, rows: dict[int, dict]) -> bytes:
    """One change batch of creates committed now (the worker re-reads the deployments before
    scoring changes committed after its last look)."""
    now_us = time.time_ns() // 1000
    out = ChangeBatch("test", "rowcast", "public", table, ("id", "age", "city", "y"), ("id",))
    for i, row in rows.items():
        out.add("c", None, {"id": i, **row}, lsn=1000 + 10 * i, commit_lsn=1005 + 10 * i,
                tx_order=1, xid=i, commit_us=now_us)
    return out.encode(now_us)


@pytest.mark.timeout(240)
def test_a_bad_row_of_a_batch_is_dead_lettered_alone_and_replayed_after_a_fix(settings, pg_conn,
                                                                              tmp_path):
    settings = settings.model_copy(update={"deployment_refresh_s": 0.5})
    table = f"dlqb_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, age int, city text, "
                    "y float8)")
    init_database(pg_conn, settings)
    assert deploy_cli(settings, "dlqb", "--table", table, "--target", "y").returncode == 0
    topic = settings.source_topic("public", table)
    rows = {
        1: {"age": 30, "city": "Lyon", "y": 1.0},
        2: {"age": "old", "city": "Oslo", "y": 1.0},      # a string where a number belongs
        3: {"age": 40, "city": "Lima", "y": 2.0},
        4: {"age": "NaN", "city": "Lyon", "y": 1.0},
        5: {"age": 50, "city": "x" * 5000, "y": 1.0},     # huge text as a category
        6: {"age": 25, "city": "Oslo", "y": "lots"},      # a label of the wrong type: still scored
    }
    producer = make_producer(settings)
    headers = [(BATCH_HEADER, b"1")]
    producer.send(topic, key=BATCH_KEY, value=batch(table, rows), headers=headers)
    producer.send(topic, key=BATCH_KEY, value=b'{"v": 1, "op": "c"}', headers=headers)
    producer.flush()

    with Pipeline(settings, tmp_path / "logs", ("worker", "learner", "sink")) as pipeline:
        letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 5)]
        wait_until(lambda: scored(pg_conn) == {1, 3, 6}, timeout_s=60,
                   message=lambda: f"{scored(pg_conn)}\n{pipeline.log_tail('worker')}")
        assert all(pipeline.alive().values())
        reasons = sorted(le["reason"] for le in letters)
        assert reasons == ["bad_envelope"] + ["bad_feature"] * 3 + ["bad_label"]
        whole = next(le for le in letters if le["reason"] == "bad_envelope")
        assert whole["error"].startswith("not a change batch")
        by_id = {orjson.loads(le["key"]["data"])["id"]: le for le in letters
                 if le["reason"] != "bad_envelope"}
        assert sorted(by_id) == [2, 4, 5, 6]
        # each row alone, as its own per-row envelope, with where its batch came from
        two = orjson.loads(by_id[2]["value"]["data"])
        assert two["op"] == "c" and two["after"] == {"id": 2, **rows[2]}
        assert by_id[2]["origin"]["topic"] == topic and by_id[2]["context"]["batch_row"] == 1

        # the fix: the deployment stops using age; a probe row shows the worker has it
        assert deploy_cli(settings, "dlqb", "--table", table, "--target", "y", "--features",
                          "city", "--no-backfill").returncode == 0
        producer.send(topic, key=BATCH_KEY, headers=headers,
                      value=batch(table, {99: {"age": "bad", "city": "Oslo", "y": 1.0}}))
        producer.flush()
        wait_until(lambda: 99 in scored(pg_conn), timeout_s=60,
                   message=lambda: pipeline.log_tail("worker"))
        replayed = cli(settings, "dlq", "replay", "--reason", "bad_feature", "--yes")
        assert replayed.returncode == 0 and "replayed 3 record(s)" in replayed.stdout, \
            replayed.stdout + replayed.stderr
        wait_until(lambda: {2, 4} <= scored(pg_conn), timeout_s=60,
                   message=lambda: pipeline.log_tail("worker"))
        again = drain(settings, settings.dlq_topic, 6)
        assert sum(1 for r in again if b"too long for a category" in r.value) == 2
        assert 5 not in scored(pg_conn)
    producer.close()
