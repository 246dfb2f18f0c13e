"""End-to-end benchmark: rowcast against the alternatives, in one run, printed as JSON.

    python -m bench.e2e [--rows 1000000] [--rates 500,2000,5000] [--workers 1] ...

Starts a private dev stack (its own ports and folder), then measures, in this order:

1. ``insert_baseline``: the application's single-row INSERT rate with nothing attached;
2. the PL/Python trigger baselines (model cached in SD / fetched and unpickled per row);
3. the naive poller (INSERT rate while it runs, and its insert→prediction latency);
4. rowcast: the INSERT rate while it scores, the end-to-end rate over ``--rows`` rows loaded as
   fast as Postgres takes them, and commit→prediction-row latency at each fixed ``--rates``;
   with each rowcast process's CPU seconds and peak RSS, and the slot's largest retained WAL;
5. the learner, which learns every row in the table's commit order (the merge waits for every
   partition's watermark): labels/s over the bulk load, and at each rate the learning delay
   (commit of the labelled row -> learned) p50/p99.

Every comparison is a ratio computed from figures of this same run.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg

from bench import baselines, procstat
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.registry import create_deployment
from rowcast.connectors.schema import init_database
from rowcast.core.settings import Settings
from rowcast.ops.devstack.process import free_port
from rowcast.ops.devstack.stack import DevStack
from rowcast.ops.pipeline import Pipeline

TABLE = "bench_rows"
LATENCY_SQL = """
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM written_at - source_committed_at) * 1000)
FROM rowcast.predictions
WHERE deployment = 'bench' AND (pk->>'id')::bigint BETWEEN %s AND %s
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="linear_regression")
    p.add_argument("--rows", type=int, default=200_000, help="rows for the end-to-end rate")
    p.add_argument("--rates", default="500,2000,5000", help="fixed insert rates, rows/s")
    p.add_argument("--rate-seconds", type=float, default=10.0)
    p.add_argument("--insert-rows", type=int, default=5000, help="rows per INSERT-rate test")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--score-batch", type=int, default=500)
    p.add_argument("--sink-batch", type=int, default=2000)
    p.add_argument("--source-batch", type=int, default=5000)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--state-dir", type=Path, default=Path(".rowcast/bench"))
    return p.parse_args(argv)


def bench_settings(args: argparse.Namespace) -> Settings:
    name = f"bench{uuid.uuid4().hex[:6]}"
    return Settings(
        postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
        kafka_bootstrap=f"127.0.0.1:{free_port()}", topic_prefix=name, slot_name=name,
        publication_name=name, state_dir=args.state_dir.resolve() / name,
        worker_web_port=free_port(), topic_partitions=args.partitions,
        score_batch_size=args.score_batch, sink_batch_size=args.sink_batch,
        source_max_changes=args.source_batch, _env_file=None)


class Sampler:
    """Samples the rowcast processes' CPU/RSS and the slot's retained WAL in the background."""

    def __init__(self, pipeline: Pipeline, dsn: str, slot: str, every_s: float = 0.5) -> None:
        self.pipeline, self.dsn, self.slot, self.every_s = pipeline, dsn, slot, every_s
        self.max_retained_wal = 0
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.wait(self.every_s):
                lag = slot_lag(conn, self.slot)
                if lag:
                    self.max_retained_wal = max(self.max_retained_wal, lag.retained_bytes)
                self.stats()

    def stats(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, proc in self.pipeline.procs.items():
            stat = procstat.read_tree(proc.pid)
            if stat is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), stat.peak_rss_mb)
                out[name] = {"cpu_s": round(stat.cpu_s, 2), "peak_rss_mb": round(self.peak[name], 1)}
        return out

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_predictions(conn: psycopg.Connection, first: int, last: int, timeout_s: float,
                         pipeline: Pipeline) -> None:
    deadline = time.monotonic() + timeout_s
    expected = last - first + 1
    while time.monotonic() < deadline:
        got = conn.execute("SELECT count(*) FROM rowcast.predictions WHERE deployment = 'bench' "
                           "AND (pk->>'id')::bigint BETWEEN %s AND %s", (first, last)).fetchone()[0]
        if got >= expected:
            return
        dead = [n for n, up in pipeline.alive().items() if not up]
        if dead:
            raise SystemExit(f"rowcast {dead[0]} died:\n{pipeline.log_tail(dead[0])}")
        time.sleep(0.1)
    raise SystemExit(f"only {got} of {expected} predictions after {timeout_s} s")


def wait_for_learning(conn: psycopg.Connection, timeout_s: float) -> float:
    """Until the learner has learned every labelled row of the table; when."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE purchase_amount IS NOT NULL"
                            ).fetchone()[0]
        learned = conn.execute("SELECT coalesce(max(samples), 0) FROM rowcast.model_versions "
                               "WHERE deployment = 'bench'").fetchone()[0]
        if learned >= rows:
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError("the learner did not learn every row in time")


def learning_delay(conn: psycopg.Connection, since: object) -> dict[str, float | None]:
    """Label committed -> learned, from the versions written since ``since``: the median of
    their p50s and the worst of their p99s (each version covers the labels it learned)."""
    rows = [r[0] for r in conn.execute(
        "SELECT metrics->'learning_delay_ms' FROM rowcast.model_versions WHERE deployment = "
        "'bench' AND created_at >= %s AND metrics ? 'learning_delay_ms'", (since,))]
    if not rows:
        return {"p50": None, "p99": None}
    p50s = sorted(r["p50"] for r in rows)
    return {"p50": p50s[len(p50s) // 2], "p99": max(r["p99"] for r in rows)}


def max_id(conn: psycopg.Connection) -> int:
    return conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()[0]


def bulk_load(conn: psycopg.Connection, n: int, batch: int = 1000) -> None:
    rng = random.Random(5)
    with conn.cursor() as cur:
        for start in range(0, n, batch):
            with conn.transaction(), cur.copy(
                    f"COPY {TABLE} (age, income, credit_score, purchase_amount) FROM STDIN") as copy:
                for _ in range(min(batch, n - start)):
                    copy.write_row(baselines.sample_row(rng))


def drive_at_rate(conn: psycopg.Connection, rate: float, seconds: float) -> int:
    """Insert ``rate`` rows/s for ``seconds``, in one small transaction every 10 ms."""
    rng = random.Random(int(rate))
    sql = (f"INSERT INTO {TABLE} (age, income, credit_score, purchase_amount) "
           "VALUES (%s, %s, %s, %s)")
    started, sent = time.monotonic(), 0
    with conn.cursor() as cur:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - sent
            if due > 0:
                with conn.transaction():
                    cur.executemany(sql, [baselines.sample_row(rng) for _ in range(due)])
                sent += due
            time.sleep(0.01)
    return sent


def measure_baselines(dsn: str, n: int) -> dict:
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        baselines.create_table(conn, "bench_plain")
        out["insert_baseline_rows_per_s"] = baselines.insert_throughput(dsn, "bench_plain", n)
        if baselines.plpython_available(conn):
            for cached in (True, False):
                table = f"bench_trigger_{'cached' if cached else 'per_row'}"
                baselines.create_table(conn, table)
                baselines.install_trigger(conn, table, cached)
                out[f"{table}_rows_per_s"] = baselines.insert_throughput(dsn, table, n)
                scored = conn.execute(f"SELECT count(predicted) FROM {table}").fetchone()[0]
                assert scored == n, f"the trigger scored {scored} of {n} rows"
        else:
            out["trigger_baselines"] = "skipped: install postgresql-plpython3-15 (make bench does)"
        baselines.create_table(conn, "bench_polled")
        conn.execute("DROP TABLE IF EXISTS poller_predictions")
        with baselines.Poller(dsn, "bench_polled"):
            out["insert_with_poller_rows_per_s"] = baselines.insert_throughput(dsn, "bench_polled", n)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and conn.execute(
                    "SELECT count(*) FROM poller_predictions").fetchone()[0] < n:
                time.sleep(0.1)
        p50, p95, p99 = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY "
            "extract(epoch FROM written_at - created_at) * 1000) FROM poller_predictions"
        ).fetchone()[0]
        out["poller_latency_ms"] = {"p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1)}
    return out


def measure_rowcast(settings: Settings, args: argparse.Namespace, dsn: str) -> dict:
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        baselines.create_table(conn, TABLE)
        init_database(conn, settings)
        create_deployment(conn, "bench", TABLE, "purchase_amount", list(baselines.FEATURES),
                          args.model)
    # the learner too: every bench row arrives labelled, so it learns each one (and competes for
    # the same cores, as it would on a small production box)
    names = ("source", *[f"worker#{i}" if i else "worker" for i in range(args.workers)],
             "learner", "sink")
    pipeline = Pipeline(settings, settings.state_dir / "logs", names).start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn, \
                Sampler(pipeline, dsn, settings.slot_name) as sampler:
            conn.execute(f"INSERT INTO {TABLE} (age, income) VALUES (30, 1000)")
            started = time.monotonic()
            wait_for_predictions(conn, 1, 1, 120, pipeline)
            out["first_prediction_after_start_s"] = round(time.monotonic() - started, 2)

            out["insert_with_rowcast_rows_per_s"] = baselines.insert_throughput(
                dsn, TABLE, args.insert_rows)
            wait_for_predictions(conn, 1, max_id(conn), 300, pipeline)

            first = max_id(conn) + 1
            cpu_before = sampler.stats()
            load_started = time.monotonic()
            bulk_load(conn, args.rows)
            load_s = time.monotonic() - load_started
            wait_for_predictions(conn, first, first + args.rows - 1, 600 + args.rows / 1000, pipeline)
            span = conn.execute(
                "SELECT extract(epoch FROM max(written_at) - min(source_committed_at)) "
                "FROM rowcast.predictions WHERE deployment = 'bench' "
                "AND (pk->>'id')::bigint >= %s", (first,)).fetchone()[0]
            cpu_after = sampler.stats()
            learned_s = wait_for_learning(conn, 600 + args.rows / 1000) - load_started
            out["learner"] = {"labels_per_s_in_commit_order": round(args.rows / learned_s)}
            out["end_to_end"] = {
                "rows": args.rows,
                "load_rows_per_s": round(args.rows / load_s),
                "rows_per_s": round(args.rows / float(span)),
                "cpu_s_per_process": {n: round(cpu_after[n]["cpu_s"] - cpu_before[n]["cpu_s"], 1)
                                      for n in cpu_after},
            }

            out["latency_ms_at_rate"] = {}
            out["learning_delay_ms_at_rate"] = {}
            for rate in (float(r) for r in args.rates.split(",")):
                first = max_id(conn) + 1
                rate_started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
                sent = drive_at_rate(conn, rate, args.rate_seconds)
                wait_for_predictions(conn, first, first + sent - 1, 300, pipeline)
                n, (p50, p95, p99) = conn.execute(LATENCY_SQL, (first, first + sent - 1)).fetchone()
                out["latency_ms_at_rate"][f"{rate:g}"] = {
                    "rows": n, "achieved_rows_per_s": round(sent / args.rate_seconds),
                    "p50": round(p50, 1), "p95": round(p95, 1), "p99": round(p99, 1)}
                wait_for_learning(conn, 300)
                out["learning_delay_ms_at_rate"][f"{rate:g}"] = learning_delay(conn, rate_started)
            out["processes"] = sampler.stats()
            out["max_slot_retained_wal_mb"] = round(sampler.max_retained_wal / 2**20, 1)
    finally:
        pipeline.stop()
    return out


def ratios(result: dict) -> dict:
    base = result.get("insert_baseline_rows_per_s")
    if not base:
        return {}
    keys = ["insert_with_rowcast_rows_per_s", "bench_trigger_cached_rows_per_s",
            "bench_trigger_per_row_rows_per_s", "insert_with_poller_rows_per_s"]
    return {k.replace("_rows_per_s", "_vs_baseline"): round(result[k] / base, 3)
            for k in keys if isinstance(result.get(k), float)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = bench_settings(args)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(settings)
    print(f"starting a private dev stack in {settings.state_dir} ...", file=sys.stderr)
    stack.up()
    dsn = settings.postgres_dsn.get_secret_value()
    result: dict = {"config": {k: v for k, v in vars(args).items() if k != "state_dir"}}
    try:
        if not args.skip_baselines:
            print("measuring baselines ...", file=sys.stderr)
            result.update(measure_baselines(dsn, args.insert_rows))
        print("measuring rowcast ...", file=sys.stderr)
        result.update(measure_rowcast(settings, args, dsn))
        result["ratios"] = ratios(result)
    finally:
        stack.reset()
    for key, value in list(result.items()):
        if isinstance(value, float):
            result[key] = round(value)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
