"""Soak (``pytest -m slow``, minutes long): a steady insert rate with every resource sampled.

Memory of every rowcast process, open Postgres connections and the WAL the slot retains are
sampled every few seconds; after a warm-up, the second half of the run may not grow beyond a
small margin over the first half. Duration: ``ROWCAST_SOAK_S`` (default 240 s) at
``ROWCAST_SOAK_RATE`` rows/s (default 200).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import psycopg
import pytest

from bench.procstat import read_tree
from rowcast.ops.pipeline import Pipeline
from tests.helpers.cli import deploy_cli, rowcast_cli
from tests.helpers.learning import fast
from tests.helpers.waiting import wait_until

SOAK_S = float(os.environ.get("ROWCAST_SOAK_S", "240"))
RATE = float(os.environ.get("ROWCAST_SOAK_RATE", "200"))


@pytest.mark.slow
@pytest.mark.timeout(int(SOAK_S) + 600)
def test_resources_stay_bounded_at_a_steady_rate(settings, pg_conn, pg_server, tmp_path):
    settings = fast(settings)
    table = f"soak_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, x float8, c text, y float8)")
    assert deploy_cli(settings, "soak", "--table", table, "--target", "y").returncode == 0
    stop = threading.Event()
    inserted = [0]

    def write() -> None:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            started = time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - started) * RATE) - inserted[0]
                if due > 0:
                    with conn.transaction():
                        conn.cursor().executemany(
                            f"INSERT INTO {table} VALUES (%s, %s, %s, %s)",
                            [(i, float(i % 100), f"c{i % 7}", 0.5 * (i % 100))
                             for i in range(inserted[0], inserted[0] + due)])
                    inserted[0] += due
                stop.wait(0.05)

    samples: list[dict[str, float]] = []
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        started = time.monotonic()
        while time.monotonic() - started < SOAK_S:
            row = {name: (read_tree(proc.pid).rss_mb if read_tree(proc.pid) else 0.0)
                   for name, proc in pipeline.procs.items()}
            row["connections"] = pg_conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'rowcast'").fetchone()[0]
            row["retained_mb"] = pg_conn.execute(
                "SELECT (pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) / 1e6)::float8 "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (settings.slot_name,)).fetchone()[0]
            samples.append(row)
            assert all(pipeline.alive().values()), pipeline.alive()
            time.sleep(5)  # the sampling period of a time series, not a wait for a condition
        stop.set()
        writer.join(timeout=10)
        wait_until(lambda: rowcast_cli(settings, "reconcile").returncode == 0, timeout_s=300,
                   interval_s=2, message=lambda: rowcast_cli(settings, "reconcile").stdout)
    warm = samples[len(samples) // 4:]
    first, second = warm[: len(warm) // 2], warm[len(warm) // 2:]
    print(f"\nsoak {SOAK_S:.0f} s at {RATE:.0f} rows/s: {inserted[0]} rows")
    for key in samples[0]:
        peak1, peak2 = max(s[key] for s in first), max(s[key] for s in second)
        print(f"{key:<12} first half peak {peak1:8.1f}  second half peak {peak2:8.1f}")
        limit = {"connections": peak1 + 2, "retained_mb": max(peak1 * 1.5, 64.0)}.get(
            key, peak1 * 1.15 + 20)  # MB of RSS: 15 % + 20 MB of slack for allocator noise
        assert peak2 <= limit, (key, peak1, peak2)
