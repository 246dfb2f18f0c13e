"""Bad input on a source topic becomes a dead letter with its reason; good rows keep flowing."""

from __future__ import annotations

import uuid

import orjson
import pytest

from connectors.envelope import SourceInfo, build_value
from connectors.kafka_clients import make_producer
from rowcast.pipeline import Pipeline
from rowcast.schema import init_database
from tests.integration.test_end_to_end import deploy_cli
from tests.kafka_reading import drain
from tests.waiting import wait_until


def envelope(table: str, row: dict) -> bytes:
    source = SourceInfo("test", "rowcast", "public", table, 1000 + row["id"], 1, 1_700_000_000_000_000)
    return orjson.dumps(build_value(op="c", before=None, after=row, source=source, tx_order=1,
                                    now_us=1_700_000_000_000_000))


@pytest.mark.timeout(180)
def test_garbage_goes_to_the_dlq_with_its_reason_and_good_rows_are_scored(settings, pg_conn, tmp_path):
    table = f"dlq_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, age int, y float8)")
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.deployments")
    assert deploy_cli(settings, "dlq", "--table", table, "--target", "y").returncode == 0
    topic = settings.source_topic("public", table)

    producer = make_producer(settings)
    producer.send(topic, key=b'{"id": 1}', value=envelope(table, {"id": 1, "age": 30, "y": 1.0}))
    producer.send(topic, key=b"x", value=b"{not json")
    producer.send(topic, key=b"x", value=b'{"hello": "world"}')
    producer.send(topic, key=b'{"id": 2}', value=envelope(table, {"id": 2, "age": "old", "y": 1.0}))
    producer.send(topic, key=b'{"id": 3}', value=envelope(table, {"id": 3, "age": 40, "y": 2.0}))
    producer.flush()
    producer.close()

    with Pipeline(settings, tmp_path / "logs", ("worker", "sink")) as pipeline:
        letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 3)]
        wait_until(lambda: pg_conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = 'dlq'").fetchone()[0] == 2,
            timeout_s=60, message=lambda: pipeline.log_tail("worker"))
        assert all(pipeline.alive().values())

    reasons = sorted((letter["stage"], letter["reason"]) for letter in letters)
    assert reasons == [("score", "bad_envelope"), ("score", "bad_envelope"), ("score", "bad_feature")]
    garbage = next(le for le in letters if le["value"]["data"] == "{not json")
    assert garbage["origin"]["topic"] == topic and garbage["error"].startswith("not JSON")
    bad_feature = next(le for le in letters if le["reason"] == "bad_feature")
    assert "age" in bad_feature["error"] and "old" in bad_feature["value"]["data"]
    scored = {r[0] for r in pg_conn.execute(
        "SELECT (pk->>'id')::int FROM rowcast.predictions WHERE deployment = 'dlq'")}
    assert scored == {1, 3}
