"""Checkpoints written behind (``learner_write_behind``), on the real services: what a checkpoint
in flight holds reads as stored before it commits; a write that fails makes the learner restore
the last committed checkpoint and learn again from there, each row once; labels that come
twice meanwhile are still refused."""

from __future__ import annotations

import threading

import psycopg
import pytest

from rowcast.connectors import versions
from rowcast.connectors.pending_labels import PgPending, ensure_schema
from rowcast.connectors.postgres import connect
from rowcast.connectors.schema import init_database
from rowcast.connectors.versions import Checkpoint
from rowcast.core.errors import ConfigError
from rowcast.ops.pipeline import Pipeline
from rowcast.streams.learner import CHECKPOINT_CONNECTION
from tests.helpers.learning import counters, fast, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until

ENTRY = {"y": 1.5, "at_us": 1_700_000_000_000_000}


def test_what_is_in_flight_reads_as_stored_until_it_commits(settings, pg_conn):
    pg_conn.execute("CREATE SCHEMA IF NOT EXISTS rowcast")
    ensure_schema(pg_conn)
    pending = PgPending(pg_conn, "behind_dep", "g1")
    pending.mark_learned(b'{"id":1}', ENTRY)
    pending.put(b'{"id":2}', {"x": 2.0, "at_us": ENTRY["at_us"]})
    changes = pending.hand_off()
    assert pending.dirty == {"features": {}, "held": {}, "learned": {}}

    with connect(settings) as writer:
        with writer.transaction():
            pending.write_changes(writer, changes)
            # not committed: this session sees none of it, and the learner reads it as stored
            assert pg_conn.execute("SELECT count(*) FROM rowcast.learned_labels WHERE "
                                   "deployment = 'behind_dep'").fetchone()[0] == 0
            assert pending.learned(b'{"id":1}') == ENTRY
            assert pending.pop(b'{"id":2}') == {"x": 2.0, "at_us": ENTRY["at_us"]}
            assert pending.learned(b'{"id":3}') is None  # read from the table: not there
        # committed: the next hand-off forgets it, and the table answers the same
        pending.hand_off()
        assert pending.learned(b'{"id":1}') == ENTRY
        assert pending.cache["learned"] == {b'{"id":1}': ENTRY}  # read back, not kept
    # the features popped after the hand-off are deleted by the next write
    with pg_conn.transaction():
        pending.write_changes(pg_conn, {"features": {b'{"id":2}': None}, "held": {},
                                        "learned": {}})
    assert pg_conn.execute("SELECT count(*) FROM rowcast.pending_labels WHERE "
                           "deployment = 'behind_dep'").fetchone()[0] == 0


def _checkpoint_backends(conn: psycopg.Connection) -> list[int]:
    return [pid for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
        (CHECKPOINT_CONNECTION,))]


@pytest.mark.timeout(300)
def test_a_failed_write_behind_restores_the_last_checkpoint_and_learns_each_row_once(
        settings, pg_conn, tmp_path):
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "behind", "behind")
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(20))
        wait_until(lambda: learned(pg_conn, "behind") == 20, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        insert_xy(pg_conn, table, range(20, 25))  # checkpointed behind: its connection exists
        wait_until(lambda: learned(pg_conn, "behind") == 25 and _checkpoint_backends(pg_conn),
                   timeout_s=60, message=lambda: pipeline.log_tail("learner"))

        # the write-behind connection dies: the next checkpoint written behind fails
        for pid in _checkpoint_backends(pg_conn):
            pg_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        insert_xy(pg_conn, table, range(25, 40))
        wait_until(lambda: "checkpoint of behind failed" in pipeline.log_tail("learner", 200),
                   timeout_s=60, message=lambda: pipeline.log_tail("learner"))
        wait_until(lambda: learned(pg_conn, "behind") == 40, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))

        # labels that change again, for rows learned before and after the failure: counted as
        # corrections, not learned twice
        pg_conn.execute(f"UPDATE public.{table} SET y = y + 1 WHERE id IN (3, 30)")
        wait_until(lambda: counters(pg_conn, "behind").get("corrections", 0) == 2, timeout_s=60,
                   message=lambda: f"{counters(pg_conn, 'behind')}")
        insert_xy(pg_conn, table, range(40, 45))
        wait_until(lambda: learned(pg_conn, "behind") == 45, timeout_s=60,
                   message=lambda: pipeline.log_tail("learner"))
        assert all(pipeline.alive().values())
    assert learned(pg_conn, "behind") == 45
    assert counters(pg_conn, "behind").get("corrections", 0) == 2
    stored = pg_conn.execute("SELECT count(*) FROM rowcast.learned_labels WHERE "
                             "deployment = 'behind'").fetchone()[0]
    assert stored == 45


@pytest.mark.timeout(300)
def test_learned_markers_expire_while_every_checkpoint_could_be_written_behind(
        settings, pg_conn, tmp_path):
    # every row gets its label, so nothing else asks for a checkpoint in place; a constant
    # label, so the loss never drifts (a drift is recorded by a checkpoint in place)
    settings = fast(settings).model_copy(update={"label_retention_s": 3.0})
    table = deployed_xy_table(settings, pg_conn, "forgetful", "forgetful")

    def markers() -> int:
        return pg_conn.execute("SELECT count(*) FROM rowcast.learned_labels WHERE "
                               "deployment = 'forgetful'").fetchone()[0]

    with Pipeline(settings, tmp_path / "logs") as pipeline:
        insert_xy(pg_conn, table, range(10), lambda i: 1.0)
        wait_until(lambda: learned(pg_conn, "forgetful") == 10, timeout_s=90,
                   message=lambda: pipeline.log_tail("learner"))
        total = 10

        def more_and_expired() -> bool:  # labels keep coming: checkpoints keep being due
            nonlocal total
            insert_xy(pg_conn, table, [total], lambda i: 1.0)
            total += 1
            return pg_conn.execute(
                "SELECT count(*) FROM rowcast.learned_labels WHERE deployment = 'forgetful' "
                "AND pk::jsonb->>'id' IN ('0','1','2','3','4','5','6','7','8','9')"
            ).fetchone()[0] == 0

        wait_until(more_and_expired, timeout_s=60, interval_s=0.3,
                   message=lambda: f"{markers()} markers\n{pipeline.log_tail('learner')}")
        wait_until(lambda: learned(pg_conn, "forgetful") == total, timeout_s=60)
    # the once rule forgets only what outlived the retention: the rest is still stored
    assert 0 < markers() < total


def _version(conn: psycopg.Connection, name: str, keep: int) -> int:
    return versions.write(conn, Checkpoint(name, 0, "g1", "linear_regression", b"s" * 100, 1,
                                           {}, {"counters": {}}, 1), keep)


def test_a_rollback_request_waits_for_the_checkpoint_holding_the_control_row(settings,
                                                                            pg_conn):
    """A checkpoint (in place or behind) thins old snapshots under the control row's lock. A
    rollback request checked its target's snapshot without that lock, so a checkpoint in
    progress could thin it right after: the request was stored, and the learner then found
    nothing to roll back to."""
    init_database(pg_conn, settings)
    versions.claim(pg_conn, "raced")
    for _ in range(3):  # versions 1-3; with 2 kept, version 2 still has its snapshot
        with pg_conn.transaction():
            _version(pg_conn, "raced", keep=2)
    outcome: dict[str, object] = {}

    def request() -> None:
        with connect(settings) as conn:
            try:
                outcome["stored"] = versions.request_rollback(conn, "raced", 2)
            except ConfigError as exc:
                outcome["refused"] = str(exc)

    with connect(settings) as learner_conn, learner_conn.transaction():
        learner_conn.execute("SELECT 1 FROM rowcast.model_control WHERE deployment = 'raced' "
                             "FOR UPDATE")  # a checkpoint in progress
        operator = threading.Thread(target=request)
        operator.start()
        wait_until(lambda: not operator.is_alive() or pg_conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
            "query LIKE '%%model_control%%'").fetchone()[0] > 0, timeout_s=30)
        assert _version(learner_conn, "raced", keep=2) == 4  # thins version 2's snapshot
    operator.join(timeout=30)
    assert "no snapshot any more" in str(outcome.get("refused")), outcome
    assert versions.rollback_target(pg_conn, "raced") is None
