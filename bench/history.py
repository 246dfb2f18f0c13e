"""History benchmark: a checkpoint and `rowcast status` cost the same with 1,000,000 versions.

    python -m bench.history [--rows 1000000] [--runs 15]

Starts a private dev stack (Postgres and Kafka: ``Monitor.sample`` asks Kafka for each stage's
lag too), deploys one table, and times against that deployment with 100 versions of history,
then again after one ``INSERT ... SELECT generate_series`` added ``--rows`` more (spread over
the last 20 hours: the thinning policy keeps them all, the worst case):

- ``checkpoint_ms``: one checkpoint write (:func:`rowcast.connectors.versions.write` in its
  transaction, with a 2 kB snapshot), as the learner does every second while labels flow;
- ``status_ms``: one :meth:`rowcast.ops.monitor.Monitor.sample`, what `rowcast status` and the
  dashboard do.

Each figure is the median of ``--runs`` runs (and the fastest, which the busy machine inflates
least); ``ratio`` is the long history's median over the short one's (1.0 = flat).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import psycopg

from rowcast.connectors import versions
from rowcast.connectors.registry import create_deployment
from rowcast.connectors.schema import init_database
from rowcast.connectors.versions import Checkpoint
from rowcast.core.settings import Settings
from rowcast.ops.devstack.process import free_port
from rowcast.ops.devstack.stack import DevStack
from rowcast.ops.monitor import Monitor

NAME = "history"


def timed(fn: Callable[[], object], runs: int) -> dict[str, float]:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        took.append((time.perf_counter() - started) * 1000)
    return {"median": round(statistics.median(took), 3), "fastest": round(min(took), 3)}


def add_history(conn: psycopg.Connection, generation: str, rows: int, over_s: float) -> None:
    """``rows`` more versions after the newest, one INSERT ... SELECT generate_series."""
    first = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM rowcast.model_versions "
                         "WHERE deployment = %s", (NAME,)).fetchone()[0]
    conn.execute(
        "INSERT INTO rowcast.model_versions (deployment, version, generation, model, samples, "
        "metrics, state, labels_offset, created_at) SELECT %s, g, %s, 'linear_regression', g, "
        "'{\"progressive\": {\"MAE\": 1.0, \"RMSE\": 1.0, \"R2\": 0.5}, \"labels\": 1}', "
        "'{\"counters\": {}, \"high_water\": {}}', g, now() - make_interval(secs => %s::float8) "
        "+ make_interval(secs => (g - %s::int) * %s::float8) "
        "FROM generate_series(%s::int, %s::int) g",
        (NAME, generation, over_s, first, over_s / rows, first, first + rows - 1))
    conn.execute("ANALYZE rowcast.model_versions")


def measure(conn: psycopg.Connection, monitor: Monitor, generation: str, keep: int,
            runs: int) -> dict:
    def checkpoint() -> None:
        with conn.transaction():
            versions.write(conn, Checkpoint(
                NAME, 0, generation, "linear_regression", b"s" * 2048, 1,
                {"progressive": {"MAE": 1.0}, "labels": 1}, {"counters": {}, "high_water": {}},
                1), keep)

    rows = conn.execute("SELECT count(*) FROM rowcast.model_versions WHERE deployment = %s",
                        (NAME,)).fetchone()[0]
    checkpoint()  # warm: plans and caches
    monitor.sample()  # warm: Kafka connections
    return {"history_rows": rows, "checkpoint_ms": timed(checkpoint, runs),
            "status_ms": timed(monitor.sample, runs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--state-dir", type=Path, default=Path(".rowcast/bench"))
    args = parser.parse_args(argv)
    prefix = f"hist{uuid.uuid4().hex[:6]}"
    settings = Settings(
        postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
        kafka_bootstrap=f"127.0.0.1:{free_port()}", topic_prefix=prefix, slot_name=prefix,
        publication_name=prefix, state_dir=args.state_dir.resolve() / prefix, _env_file=None)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(settings)
    print(f"starting a private dev stack in {settings.state_dir} ...", file=sys.stderr)
    stack.up()
    monitor = Monitor(settings)
    try:
        with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
            conn.execute("CREATE TABLE public.spend (id int PRIMARY KEY, x float8, y float8)")
            init_database(conn, settings)
            generation = create_deployment(conn, NAME, "public.spend", "y", None,
                                           "linear_regression").generation
            versions.claim(conn, NAME)
            add_history(conn, generation, 100, 3600.0)
            short = measure(conn, monitor, generation, settings.model_versions_keep, args.runs)
            print(f"adding {args.rows} history rows ...", file=sys.stderr)
            add_history(conn, generation, args.rows, 20 * 3600.0)
            long = measure(conn, monitor, generation, settings.model_versions_keep, args.runs)
    finally:
        monitor.close()
        stack.reset()
    result = {"short": short, "long": long, "ratio": {
        k: round(long[k]["median"] / short[k]["median"], 2) for k in ("checkpoint_ms", "status_ms")}}
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
