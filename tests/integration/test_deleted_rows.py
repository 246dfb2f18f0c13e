"""A deleted source row leaves nothing behind: its prediction row goes from
``rowcast.predictions``, its key gets a tombstone on the predictions topic (compaction then
forgets it), and features still waiting for its label are dropped (issue #16, item 7)."""

from __future__ import annotations

import pytest

from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import fast, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until


def predicted(conn) -> set[int]:
    return {r[0] for r in conn.execute("SELECT (pk->>'id')::int FROM rowcast.predictions "
                                       "WHERE deployment = 'deleted'")}


def pending(conn) -> int:
    return conn.execute("SELECT count(*) FROM rowcast.pending_labels WHERE deployment = "
                        "'deleted'").fetchone()[0]


@pytest.mark.timeout(300)
def test_a_deleted_row_leaves_no_prediction_no_key_and_no_pending_features(settings, pg_conn,
                                                                          tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "deleted", "deleted")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(1, 4))                      # labelled: learned
        insert_xy(pg_conn, table, range(4, 7), label=lambda i: None)  # waiting for a label
        wait_until(lambda: predicted(pg_conn) == set(range(1, 7)) and pending(pg_conn) == 3
                   and learned(pg_conn, "deleted") == 3, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        pg_conn.execute(f"DELETE FROM public.{table} WHERE id IN (2, 5)")
        insert_xy(pg_conn, table, [7])
        wait_until(lambda: predicted(pg_conn) == {1, 3, 4, 6, 7}, timeout_s=60,
                   message=lambda: pipeline.log_tail("sink"))
        wait_until(lambda: pending(pg_conn) == 2, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        done = rowcast_cli(settings, "reconcile")
        assert done.returncode == 0, done.stdout + done.stderr
    records = drain(settings, settings.predictions_topic("deleted"), 7)
    tombstones = {r.key for r in records if r.value is None}
    assert tombstones == {b'{"id":2}', b'{"id":5}'}
