"""Model history on the real Postgres: a checkpoint and what `rowcast status` reads cost the same
with a long history as with a short one, and old versions are thinned by the documented policy
(every version of the last day, then the first of each hour, then the first of each day)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from rowcast.connectors import versions
from rowcast.connectors.schema import init_database
from rowcast.connectors.versions import Checkpoint

DAY = 86400


def _synthetic(conn, name: str, first: int, rows: int, oldest_s: float, step_s: float) -> None:
    """Versions ``first..first+rows-1`` of ``name``, the first ``oldest_s`` ago, one per
    ``step_s``; no snapshots (what old history looks like)."""
    conn.execute(
        "INSERT INTO rowcast.model_versions (deployment, version, generation, model, samples, "
        "metrics, state, labels_offset, created_at) SELECT %s, g, 'g1', 'linear_regression', g, "
        "'{\"progressive\": {\"MAE\": 1.0}}', '{}', g, now() - make_interval(secs => %s::float8) "
        "+ make_interval(secs => (g - %s::int) * %s::float8) "
        "FROM generate_series(%s::int, %s::int) g",
        (name, oldest_s, first, step_s, first, first + rows - 1))


def _checkpoint(conn, name: str, keep: int = 100) -> int:
    with conn.transaction():
        return versions.write(conn, Checkpoint(
            name, 0, "g1", "linear_regression", b"s" * 2000, 1, {"progressive": {"MAE": 1.0}},
            {"counters": {}}, 1), keep)


def _fastest(fn: Callable[[], object], runs: int = 9) -> float:
    """The fastest of several runs: what the work costs, not what the busy machine adds."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _status(conn) -> list:
    return conn.execute("SELECT deployment, version, samples, metrics "
                        "FROM rowcast.model_metrics").fetchall()  # what Monitor.sample reads


@pytest.mark.timeout(300)
def test_checkpoint_and_status_cost_the_same_with_300000_history_rows(settings, pg_conn):
    init_database(pg_conn, settings)
    versions.claim(pg_conn, "aged")
    _synthetic(pg_conn, "aged", 1, 100, 20 * 3600, 1.0)
    pg_conn.execute("ANALYZE rowcast.model_versions")
    short = _fastest(lambda: _checkpoint(pg_conn, "aged")), _fastest(lambda: _status(pg_conn))

    top = pg_conn.execute("SELECT max(version) FROM rowcast.model_versions").fetchone()[0]
    _synthetic(pg_conn, "aged", top + 1, 300_000, 20 * 3600, 0.2)  # all within the last day
    pg_conn.execute("ANALYZE rowcast.model_versions")
    newest = _checkpoint(pg_conn, "aged")
    assert _status(pg_conn) == [("aged", newest, 1, {"progressive": {"MAE": 1.0}})]
    long = _fastest(lambda: _checkpoint(pg_conn, "aged")), _fastest(lambda: _status(pg_conn))

    print(f"\ncheckpoint {short[0] * 1000:.2f} -> {long[0] * 1000:.2f} ms, "
          f"status read {short[1] * 1000:.2f} -> {long[1] * 1000:.2f} ms")
    assert long[0] < 3 * short[0] + 0.003, (short, long)
    assert long[1] < 3 * short[1] + 0.003, (short, long)
    # nothing of the last day was thinned; of the newest 100 versions, the 10 checkpoints
    # written since the synthetic history keep their snapshot, the older ones lost it
    assert pg_conn.execute("SELECT count(*), count(snapshot) FROM rowcast.model_versions "
                           "WHERE deployment = 'aged'").fetchone() == (top + 300_000 + 10, 10)


@pytest.mark.timeout(300)
def test_old_versions_are_thinned_to_one_per_hour_then_one_per_day(settings, pg_conn):
    init_database(pg_conn, settings)
    versions.claim(pg_conn, "thin")
    # one version every 10 minutes for 40 days, 5 minutes off the hour: no row sits on an
    # age boundary while the test runs
    _synthetic(pg_conn, "thin", 1, 40 * 144, 40 * DAY - 300, 600.0)
    before = pg_conn.execute(
        "SELECT version, extract(epoch FROM now() - created_at), date_trunc('hour', created_at), "
        "date_trunc('day', created_at) FROM rowcast.model_versions WHERE deployment = 'thin' "
        "ORDER BY version").fetchall()
    first_of: dict[object, int] = {}
    for version, _, hour, day in before:
        first_of.setdefault(hour, version)
        first_of.setdefault(day, version)
    pinned = next(v for v, age, _, day in before if age > 31 * DAY and first_of[day] != v)
    versions.set_pin(pg_conn, "thin", None)
    pg_conn.execute("UPDATE rowcast.model_control SET pinned_version = %s "
                    "WHERE deployment = 'thin'", (pinned,))
    expected = {v for v, age, hour, day in before
                if age < DAY or (age < 30 * DAY and first_of[hour] == v) or first_of[day] == v}
    expected.add(pinned)

    written, counts = [], []
    for _ in range(30):  # each checkpoint thins a bounded batch: catch up over a few
        written.append(_checkpoint(pg_conn, "thin", keep=3))
        counts.append(pg_conn.execute("SELECT count(*) FROM rowcast.model_versions "
                                      "WHERE deployment = 'thin'").fetchone()[0])
        if len(counts) > 2 and counts[-1] == counts[-2] + 1:
            break
    kept = {r[0] for r in pg_conn.execute(
        "SELECT version FROM rowcast.model_versions WHERE deployment = 'thin'")}
    assert kept == expected | set(written), (len(kept), len(expected))
    assert len(expected) < 144 + 29 * 24 + 11 + 2  # a day, 29 days of hours, 11 days, + pin
    latest = pg_conn.execute("SELECT version FROM rowcast.model_metrics "
                             "WHERE deployment = 'thin'").fetchone()[0]
    assert latest == written[-1]


def _buffers(plan: dict) -> int:
    """Shared buffers a plan hit or read (a node's figures include its children's)."""
    return plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


@pytest.mark.timeout(300)
def test_a_thinning_step_touches_its_batch_not_the_whole_history(settings, pg_conn):
    """A new deployment's versions crossing the one-day boundary beside another deployment's
    long history (and before autovacuum has analysed its own rows): the planner put the batch
    inside a loop over every version of the deployment and ran the "first of its bucket"
    lookup per pair, so one checkpoint took 10-48 s (found timing this module: 134 s after the
    300,000-row test, 8 s alone). Counted in buffers, not seconds: the work of one step."""
    init_database(pg_conn, settings)
    versions.claim(pg_conn, "bigold")
    _synthetic(pg_conn, "bigold", 1, 20_000, 20 * 3600, 0.2)
    pg_conn.execute("ANALYZE rowcast.model_versions")  # 'young' has no rows yet in the stats
    versions.claim(pg_conn, "young")
    _synthetic(pg_conn, "young", 1, 40 * 144, 40 * DAY - 300, 600.0)
    args = {"d": "young", "age": versions.KEEP_ALL_S, "unit": "hour",
            "batch": versions.THIN_BATCH, "latest": 10**9}
    with pg_conn.transaction(force_rollback=True):
        pg_conn.execute("SET LOCAL jit = off")
        (plan,), = pg_conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                                   + versions._THIN_HOURLY, args).fetchone()
    touched = _buffers(plan["Plan"])
    print(f"\none thinning step of {versions.THIN_BATCH} versions: {touched} buffers")
    assert touched < 50 * versions.THIN_BATCH, touched  # a few index probes per version
