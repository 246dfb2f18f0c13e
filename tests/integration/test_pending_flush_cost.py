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
