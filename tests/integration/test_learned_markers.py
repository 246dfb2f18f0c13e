"""The learner's learned-row markers, written at each checkpoint, read back as they were given.

Why here: the markers are written with ``COPY`` (issue 15: the INSERT of a checkpoint's markers
was two thirds of each checkpoint and a sixth of the learner's wall time in a bulk load), so
the text format's escaping, the timestamps and the fallback for a key learned again are
checked against a real PostgreSQL: keys and labels with backslashes, tabs, quotes and
non-ASCII text, times to the microsecond, and a row deleted and inserted again with its key."""

import datetime
import time
import uuid

import psycopg
import pytest

from rowcast.connectors.pending_labels import PgPending, ensure_schema
from rowcast.core.keys import key_id
from rowcast.core.label_events import LabelEvent
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.learning import DeploymentLearner

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
KEYS = [{"id": 1}, {"id": -(2**63)}, {"Nom\t\"é\\": "a\\b\tc\nd'e"}, {"k": "\\N"},
        {"a": 1.5, "b": None}, {"uuid": str(uuid.UUID(int=7))}, {"t": "日本\u2028x"}]
LABELS = [1.0, "line\\two\tthree", True, -0.0, "\\N", None, 1e300]
RECENT = time.time_ns() // 1000  # within a day's retention
TIMES = [RECENT, 0, 1, 1_700_000_000_000_001, 946_684_800_999_999,
         1_796_053_702_886_943,
         2_000_000_000_123_456]


@pytest.fixture
def conn(pg_conn: psycopg.Connection) -> psycopg.Connection:
    pg_conn.execute("CREATE SCHEMA IF NOT EXISTS rowcast")
    ensure_schema(pg_conn)
    return pg_conn


def stored(conn: psycopg.Connection, name: str) -> dict[str, tuple]:
    rows = conn.execute("SELECT pk, entry::text, learned_at FROM rowcast.learned_labels WHERE "
                        "deployment = %s AND generation = %s", (name, "g\\1\t")).fetchall()
    return {pk: (entry, at) for pk, entry, at in rows}


def test_markers_are_stored_as_given_and_read_back(conn) -> None:
    name = f"mark\\ers\t{uuid.uuid4().hex[:6]}"
    pending = PgPending(conn, name, "g\\1\t")
    for key, y, at in zip(KEYS, LABELS, TIMES, strict=True):
        pending.mark_learned(key_id(key), {"y": y, "at_us": at})
    with conn.transaction():
        pending.flush(10 * 365 * 86400 * 100)
    rows = stored(conn, name)
    assert len(rows) == len(KEYS)
    for key, at in zip(KEYS, TIMES, strict=True):
        _entry, learned_at = rows[key_id(key).decode()]
        assert learned_at == EPOCH + datetime.timedelta(microseconds=at)
    again = PgPending(conn, name, "g\\1\t")
    for key, y, at in zip(KEYS, LABELS, TIMES, strict=True):
        assert again.learned(key_id(key)) == {"y": y, "at_us": at}


def test_a_key_learned_again_replaces_its_marker(conn) -> None:
    """A row deleted and inserted again with its key is learned again (by design): its marker
    is stored already, so the checkpoint replaces it, in the same transaction."""
    name = f"again_{uuid.uuid4().hex[:6]}"
    first = PgPending(conn, name, "g\\1\t")
    for i in range(50):
        first.mark_learned(key_id({"id": i}), {"y": float(i), "at_us": TIMES[0]})
    with conn.transaction():
        first.flush(86400)
    later = PgPending(conn, name, "g\\1\t")
    for i in range(40, 60):  # ten stored already, ten new
        later.mark_learned(key_id({"id": i}), {"y": -float(i), "at_us": TIMES[0] + 7})
    with conn.transaction():
        later.flush(86400)
        conn.execute("SELECT 1")  # the transaction is still usable after the conflict
    rows = stored(conn, name)
    assert len(rows) == 60
    check = PgPending(conn, name, "g\\1\t")
    assert check.learned(key_id({"id": 39})) == {"y": 39.0, "at_us": TIMES[0]}
    for i in range(40, 60):
        assert check.learned(key_id({"id": i})) == {"y": -float(i), "at_us": TIMES[0] + 7}
        assert rows[key_id({"id": i}).decode()][1] == EPOCH + datetime.timedelta(
            microseconds=TIMES[0] + 7)


def test_a_row_whose_label_is_older_than_the_retention_is_still_learned_once(conn) -> None:
    """A learner catching up after an outage longer than the retention learns labels committed
    before it: their markers count from when they were learned, so the checkpoint's expiry
    does not drop them at once and a second delivery of the row is a duplicate (the CI run of
    test_learning_batches learned one twice when its batches came in two polls)."""
    name = f"old_{uuid.uuid4().hex[:6]}"
    d = Deployment(name, "public", "t", "y", (Feature("x", "number"),), "linear_regression",
                   ("id",))
    learner = DeploymentLearner.fresh(d, PgPending(conn, name, d.generation))

    def event(i: int) -> LabelEvent:  # committed at 1 µs after the epoch
        return LabelEvent("labelled", name, d.generation, {"id": i}, "t:0", (0, 0, 0), 1,
                          {"x": float(i)}, 2.0 * i)

    assert learner.apply([event(i) for i in range(5)]) == 5
    with conn.transaction():  # the checkpoint: markers written, what outlived 7 days expired
        learner.pending.flush(7 * 86400)
    assert learner.apply([event(6), event(1)]) == 1
    assert learner.state.counters["duplicates"] == 1
    assert conn.execute("SELECT count(*) FROM rowcast.learned_labels WHERE deployment = %s",
                        (name,)).fetchone()[0] == 5
