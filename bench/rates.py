"""What the running pipeline costs the machine at steady rates, and where it runs: JSON.

    python -m bench.rates [--rates 20,300,2000] [--seconds 15] [--pairs 5]
                          [--placements shared,split,source_only]

Why this bench: the writer's INSERT rate with rowcast attached (``make bench``'s
``insert_with_rowcast_vs_paused``) is set by how much CPU the pipeline takes from a writer
sharing its cores, and that CPU follows the pipeline's *rounds* (one source round, one batch
record per partition, a faust event, a sink transaction...) far more than its rows. The bulk
figures of ``make bench`` (µs per row over a 200k-row COPY) cannot show it. Measured here:

1. ``at_rate``: one writer session commits single-row INSERTs at each fixed ``--rates``; over
   ``--seconds`` (after a warm-up), CPU milliseconds per second of each rowcast process, of
   PostgreSQL (every backend: the writer's, the walsender, rowcast's own) and of the Kafka
   broker, their total, the total per row, and the change topic's records per second (so
   per-round cost = total / rounds) and the transactions rowcast made PostgreSQL commit per
   second (the sink's upserts, the source's positions, the learner's checkpoints);
2. ``writer``: for each ``--placements``, ``--pairs`` single-row INSERT runs of
   ``--insert-rows`` at full speed, each right after one with rowcast's processes stopped
   (SIGSTOP, as in ``make bench``); the ratio of the medians. ``shared``: everything on every
   CPU, as ``make bench`` runs. ``split``: rowcast's processes and the broker on the last CPU,
   PostgreSQL and the writer on the others (``sched_setaffinity``), as on a machine where
   rowcast and Kafka have cores of their own; its ``with_vs_shared_paused`` compares with the
   writer on every CPU and rowcast stopped. ``source_only``: as ``shared``, but the worker,
   learner and sink stay stopped through the runs "with" rowcast too: the writer then loses
   only what capturing its changes costs (the source, the walsender decoding each commit as
   it is flushed, the broker storing them), the floor of any logical-decoding pipeline on
   the writer's cores, which ``shared`` can only be above.

Every figure is from this run, on this machine; compare them only with each other.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
from kafka import TopicPartition

from bench import baselines, procstat
from bench.e2e import (
    TABLE,
    bench_settings,
    max_id,
    paused,
    service_pids,
    wait_for_predictions,
)
from bench.e2e import parse_args as e2e_args
from rowcast.connectors.kafka_clients import make_consumer
from rowcast.connectors.registry import create_deployment
from rowcast.connectors.schema import init_database
from rowcast.core.settings import Settings
from rowcast.ops.devstack.stack import DevStack
from rowcast.ops.pipeline import Pipeline

WARM_S = 8.0  # each rate runs this long before it is measured (queues and JIT settle)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="20,300,2000", help="fixed single-row INSERT rates, rows/s")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per rate")
    p.add_argument("--insert-rows", type=int, default=5000, help="rows per writer run")
    p.add_argument("--pairs", type=int, default=5, help="writer runs per placement")
    p.add_argument("--placements", default="shared,split,source_only",
                   help="shared, split, source_only, or some of them (see the module's "
                   "documentation)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--state-dir", type=Path, default=Path(".rowcast/bench"))
    return p.parse_args(argv)


def cpu_s(pids: list[int]) -> float:
    return sum(s.cpu_s for s in (procstat.read(p) for p in pids) if s is not None)


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` on ``cpus`` (threads started later inherit it)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


class Writer:
    """One session committing single-row INSERTs at ``rate`` rows/s until stopped."""

    def __init__(self, dsn: str, rate: float) -> None:
        self.dsn, self.rate = dsn, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        sql = (f"INSERT INTO {TABLE} (age, income, credit_score, purchase_amount) "
               "VALUES (%s, %s, %s, %s)")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            started, n = time.perf_counter(), 0
            while not self._stop.is_set():
                conn.execute(sql, baselines.sample_row(rng))
                n += 1
                ahead = started + n / self.rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)  # pacing a writer, not awaiting a condition

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def topic_end(settings: Settings) -> int:
    """Records on the bench table's change topic (every partition's end offset)."""
    consumer = make_consumer(settings, f"{settings.topic_prefix}-bench-rates")
    try:
        topic = settings.source_topic("public", TABLE)
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def committed(conn: psycopg.Connection) -> int:
    """Transactions committed in the database so far (the statistics counters: each backend
    reports at most every second, so over a window of many seconds the error is small)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT xact_commit FROM pg_stat_database "
                        "WHERE datname = current_database()").fetchone()[0]


def at_rate(settings: Settings, pipeline: Pipeline, services: dict[str, int], dsn: str,
            rate: float, seconds: float) -> dict:
    groups = {name: proc.pid for name, proc in pipeline.procs.items()} | services
    with psycopg.connect(dsn, autocommit=True) as conn, Writer(dsn, rate):
        time.sleep(WARM_S)  # a fixed warm-up of a paced load, not a wait for a condition
        before = {name: cpu_s(procstat.process_tree(pid)) for name, pid in groups.items()}
        commits = committed(conn)
        first, records, started = max_id(conn), topic_end(settings), time.monotonic()
        time.sleep(seconds)  # the measured window itself
        after = {name: cpu_s(procstat.process_tree(pid)) for name, pid in groups.items()}
        last, elapsed = max_id(conn), time.monotonic() - started
        records = topic_end(settings) - records
        commits = committed(conn) - commits - (last - first)  # less the writer's own
    rows_per_s = (last - first) / elapsed
    ms = {name: round(1000 * (after[name] - before[name]) / elapsed, 1) for name in groups}
    total = sum(ms.values())
    return {"rows_per_s": round(rows_per_s), "change_records_per_s": round(records / elapsed),
            "rowcast_transactions_per_s": round(commits / elapsed),
            "cpu_ms_per_s": ms, "total_cpu_ms_per_s": round(total, 1),
            "total_cpu_us_per_row": round(1000 * total / rows_per_s, 1) if rows_per_s else None}


def writer_pairs(dsn: str, pipeline: Pipeline, services: dict[str, int], placement: str,
                 n_rows: int, pairs: int, caught_up: object) -> dict:
    every = set(range(os.cpu_count() or 1))
    rowcast_cpus = {max(every)} if placement == "split" and len(every) > 1 else every
    others = every - rowcast_cpus or every
    # source_only: the worker, learner and sink stopped through the "with" run too, so the
    # writer shares the cores with the source, the walsender and the broker alone: the least
    # any logical-decoding pipeline costs it
    stopped_with = [n for n in pipeline.procs if n != "source"] if placement == "source_only" \
        else []

    def place() -> None:
        pin([p for proc in pipeline.procs.values() for p in procstat.process_tree(proc.pid)]
            + procstat.process_tree(services["kafka"]), rowcast_cpus)
        pin(procstat.process_tree(services["postgres"]), others)  # new backends inherit it
        os.sched_setaffinity(0, others)  # the writer (this process)

    with_rowcast, stopped = [], []
    try:
        for i in range(pairs):
            place()
            with paused(pipeline):
                stopped.append(baselines.insert_throughput(dsn, TABLE, n_rows, seed=100 + i))
            caught_up()
            place()
            with paused(pipeline, stopped_with):
                with_rowcast.append(baselines.insert_throughput(dsn, TABLE, n_rows, seed=1 + i))
            caught_up()
    finally:
        pin([p for proc in pipeline.procs.values() for p in procstat.process_tree(proc.pid)]
            + procstat.process_tree(services["kafka"]) + procstat.process_tree(services["postgres"]), every)
        os.sched_setaffinity(0, every)
    return {"with_rowcast_rows_per_s": round(statistics.median(with_rowcast)),
            "paused_rows_per_s": round(statistics.median(stopped)),
            "with_rowcast_runs": [round(r) for r in with_rowcast],
            "paused_runs": [round(r) for r in stopped],
            "with_vs_paused": round(statistics.median(with_rowcast) / statistics.median(stopped), 3),
            "rowcast_cpus": sorted(rowcast_cpus), "postgres_cpus": sorted(others)}


@contextlib.contextmanager
def running_pipeline(args: argparse.Namespace) -> Iterator[tuple[Settings, Pipeline, dict, str]]:
    settings = bench_settings(e2e_args(["--partitions", str(args.partitions),
                                        "--state-dir", str(args.state_dir)]))
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(settings)
    print(f"starting a private dev stack in {settings.state_dir} ...", file=sys.stderr)
    stack.up()
    dsn = settings.postgres_dsn.get_secret_value()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            baselines.create_table(conn, TABLE)
            init_database(conn, settings)
            create_deployment(conn, "bench", TABLE, "purchase_amount", list(baselines.FEATURES),
                              "linear_regression")
        pipeline = Pipeline(settings, settings.state_dir / "logs",
                            ("source", "worker", "learner", "sink")).start()
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"INSERT INTO {TABLE} (age, income) VALUES (30, 1000)")
                wait_for_predictions(conn, 1, 1, 120, pipeline)
            yield settings, pipeline, service_pids(stack), dsn
        finally:
            pipeline.stop()
    finally:
        stack.reset()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    placements = [p for p in args.placements.split(",") if p]
    unknown = set(placements) - {"shared", "split", "source_only"}
    if unknown:
        raise SystemExit(f"bench.rates: unknown placement {sorted(unknown)[0]!r} "
                         "(shared, split or source_only)")
    result: dict = {"config": {k: str(v) if isinstance(v, Path) else v
                               for k, v in vars(args).items() if k != "state_dir"},
                    "cpus": os.cpu_count()}
    with running_pipeline(args) as (settings, pipeline, services, dsn):
        result["at_rate"] = {}
        for rate in rates:
            print(f"at {rate:g} rows/s ...", file=sys.stderr)
            result["at_rate"][f"{rate:g}"] = at_rate(settings, pipeline, services, dsn, rate,
                                                     args.seconds)
        with psycopg.connect(dsn, autocommit=True) as conn:
            def caught_up() -> None:
                wait_for_predictions(conn, 1, max_id(conn), 300, pipeline)

            caught_up()
            baselines.insert_runs(dsn, TABLE, args.insert_rows, 1, caught_up)  # warm
            result["writer"] = {}
            for placement in placements:
                print(f"writer runs, {placement} ...", file=sys.stderr)
                result["writer"][placement] = writer_pairs(
                    dsn, pipeline, services, placement, args.insert_rows, args.pairs, caught_up)
    shared, split = (result["writer"].get(p) for p in ("shared", "split"))
    if shared and split:
        split["with_vs_shared_paused"] = round(
            split["with_rowcast_rows_per_s"] / shared["paused_rows_per_s"], 3)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
