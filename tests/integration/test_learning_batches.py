"""The learner reads label batch records (issue 15): one record carries a scored batch's label
events for one deployment; it is one position for the checkpoint, and a record that does not
decode goes to the dead-letter topic whole, with its reason. Single-event records (older
scorers) still read."""

from __future__ import annotations

import pytest

from rowcast.connectors.kafka_clients import make_producer
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.label_events import BATCH_HEADER, BATCH_KEY, LabelEvent, encode_batch
from rowcast.ops.pipeline import Pipeline
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import counters, fast, learned
from tests.helpers.tables import deployed_xy_table
from tests.helpers.waiting import wait_until


@pytest.mark.timeout(300)
def test_label_batches_are_learned_and_a_broken_one_is_dead_lettered_whole(settings, pg_conn,
                                                                          tmp_path):
    settings = fast(settings)
    deployed_xy_table(settings, pg_conn, "batched", "batched")
    generation = pg_conn.execute(
        "SELECT (extract(epoch FROM created_at) * 1000000)::bigint || '.' || version "
        "FROM rowcast.deployments WHERE name = 'batched'").fetchone()[0]

    def event(i: int) -> LabelEvent:  # no source position: released without watermarks
        return LabelEvent("labelled", "batched", generation, {"id": i}, "t:0", (0, 0, 0), 1,
                          {"x": float(i)}, 2.0 * i)

    topic = settings.labels_topic("batched")
    broken = b'{"v": 1, "events": [{"kind": "labelled"'
    producer = make_producer(settings)
    producer.send(topic, key=BATCH_KEY, value=encode_batch([event(i) for i in range(5)]),
                  headers=[(BATCH_HEADER, b"1")], partition=0)
    producer.send(topic, key=BATCH_KEY, value=broken, headers=[(BATCH_HEADER, b"1")],
                  partition=0)
    producer.send(topic, key=b'{"id":5}', value=event(5).to_json(), partition=0)  # single event
    producer.send(topic, key=BATCH_KEY, value=encode_batch([event(6), event(1)]),
                  headers=[(BATCH_HEADER, b"1")], partition=0)  # id 1 again: a duplicate
    producer.flush()
    producer.close()
    with Pipeline(settings, tmp_path / "logs", names=("learner",)) as pipeline:
        wait_until(lambda: learned(pg_conn, "batched") == 7, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, 1)]
        wait_until(lambda: pg_conn.execute(
            "SELECT labels_offset FROM rowcast.model_versions WHERE deployment = 'batched' "
            "ORDER BY version DESC LIMIT 1").fetchone()[0] == 4, timeout_s=30)
    mine = [le for le in letters if le.topic == topic]
    assert [(le.reason, le.offset, le.value) for le in mine] == [("bad_label_batch", 1, broken)]
    assert counters(pg_conn, "batched")["duplicates"] == 1
    assert counters(pg_conn, "batched")["learned"] == 7
