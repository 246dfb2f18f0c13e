"""A checkpoint's flush of the learner's maps costs what changed, not what is stored.

``rowcast.learned_labels`` holds a marker per learned row for the label retention (7 days by
default: at 20,000 rows/s, billions). Every checkpoint also drops the rows of *older*
generations; written as ``generation <> current`` that read every marker of the deployment
through the primary key, so each checkpoint got slower as the table grew (a 1M-row load ended
with checkpoints scanning a million index entries). Measured here with PostgreSQL's own
counters: the tuples read by one flush that changed nothing must not grow with the table."""

import time
import uuid

import orjson
import psycopg
import pytest

from rowcast.connectors.pending_labels import PgPending, ensure_schema

NOW_US = time.time_ns() // 1000


def tuples_read(conn: psycopg.Connection, table: str) -> int:
    """Tuples read from ``rowcast.<table>`` so far, by sequential and index scans."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    seq, idx = conn.execute(
        "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
        "WHERE schemaname = 'rowcast' AND relname = %s", (table,)).fetchone()
    entries = conn.execute(
        "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
        "WHERE schemaname = 'rowcast' AND relname = %s", (table,)).fetchone()[0]
    return int(seq) + int(idx) + int(entries)


@pytest.fixture
def conn(pg_conn: psycopg.Connection) -> psycopg.Connection:
    pg_conn.execute("CREATE SCHEMA IF NOT EXISTS rowcast")
    ensure_schema(pg_conn)
    return pg_conn


def old_generation(conn: psycopg.Connection, name: str, n: int = 5) -> None:
    """Markers a learner of an older generation left (the deployment was redeployed since)."""
    conn.execute("INSERT INTO rowcast.learned_labels SELECT %s, 'g1', 'k' || i, '{}', now() "
                 "FROM generate_series(1, %s) AS i", (name, n))


def count(conn: psycopg.Connection, name: str, generation: str) -> int:
    return conn.execute("SELECT count(*) FROM rowcast.learned_labels WHERE deployment = %s "
                        "AND generation = %s", (name, generation)).fetchone()[0]


@pytest.mark.parametrize("stored", [2_000, 20_000])
def test_an_empty_flush_reads_no_stored_marker(conn, stored):
    name = f"flush_{uuid.uuid4().hex[:8]}"
    old_generation(conn, name)
    pending = PgPending(conn, name, "g2")
    with conn.transaction():  # this generation's first checkpoint drops the older one's rows
        for i in range(stored):
            pending.mark_learned(orjson.dumps({"id": i}), {"y": 1.0, "at_us": NOW_US})
        pending.flush(7 * 86400)
    assert (count(conn, name, "g1"), count(conn, name, "g2")) == (0, stored)
    conn.execute("ANALYZE rowcast.learned_labels")
    before = tuples_read(conn, "learned_labels")
    with conn.transaction():
        pending.flush(7 * 86400)  # nothing changed
    read = tuples_read(conn, "learned_labels") - before
    assert count(conn, name, "g2") == stored
    assert read < 100, f"one empty flush read {read} tuples of {stored} stored markers"


def test_a_failed_first_checkpoint_drops_the_older_generation_again(conn):
    name = f"flush_{uuid.uuid4().hex[:8]}"
    old_generation(conn, name)
    pending = PgPending(conn, name, "g2")
    with pytest.raises(RuntimeError), conn.transaction():
        pending.flush(7 * 86400)
        raise RuntimeError("the rest of the checkpoint failed: all of it rolls back")
    pending.forget()  # what the learner does after a failed checkpoint
    assert count(conn, name, "g1") == 5
    with conn.transaction():
        pending.flush(7 * 86400)
    assert count(conn, name, "g1") == 0


def index_scans(conn: psycopg.Connection, index: str) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT coalesce(idx_scan, 0) FROM pg_stat_user_indexes WHERE "
                        "schemaname = 'rowcast' AND indexrelname = %s", (index,)).fetchone()[0]


def test_new_markers_are_inserted_without_a_conflict_check_per_row(conn):
    """Markers of rows never learned (all of a bulk load) go in with a plain INSERT: the
    upsert's speculative insertion probed the primary key once per row first (5.7 vs 3.9 µs
    of server CPU per marker, on the learner's critical path)."""
    name = f"flush_{uuid.uuid4().hex[:8]}"
    pending = PgPending(conn, name, "g1")
    keys = [orjson.dumps({"id": i}) for i in range(2_000)]
    pending.assume_absent(keys, ("learned",))
    for k in keys:
        pending.mark_learned(k, {"y": 1.0, "at_us": NOW_US})
    before = index_scans(conn, "learned_labels_pkey")
    with conn.transaction():
        pending.flush(7 * 86400)
    assert count(conn, name, "g1") == 2_000
    scans = index_scans(conn, "learned_labels_pkey") - before
    assert scans < 10, f"{scans} primary-key probes for 2,000 new markers"


def test_a_marker_already_stored_is_replaced_not_refused(conn):
    """A row deleted and inserted again with the same key is a new row: learned again, its
    marker replaces the old one (a plain INSERT would fail the whole checkpoint, forever)."""
    name = f"flush_{uuid.uuid4().hex[:8]}"
    first = PgPending(conn, name, "g1")
    for i in range(3):
        first.mark_learned(orjson.dumps({"id": i}), {"y": 1.0, "at_us": NOW_US})
    with conn.transaction():
        first.flush(7 * 86400)
    again = PgPending(conn, name, "g1")  # e.g. the re-inserted rows, assumed new
    keys = [orjson.dumps({"id": i}) for i in (2, 3)]
    again.assume_absent(keys, ("learned",))
    for k in keys:
        again.mark_learned(k, {"y": 2.0, "at_us": NOW_US + 1})
    with conn.transaction():
        again.flush(7 * 86400)
        conn.execute("SELECT 1")  # the checkpoint's transaction is still usable
    stored = dict(conn.execute("SELECT pk, (entry->>'y')::float8 FROM rowcast.learned_labels "
                               "WHERE deployment = %s", (name,)).fetchall())
    assert stored == {'{"id":0}': 1.0, '{"id":1}': 1.0, '{"id":2}': 2.0, '{"id":3}': 2.0}

