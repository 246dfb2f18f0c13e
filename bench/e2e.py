"""End-to-end benchmark: rowcast against the alternatives, in one run, printed as JSON.

    python -m bench.e2e [--rows 1000000] [--rates 500,2000,5000] [--workers 1] ...

Starts a private dev stack (its own ports and folder), then measures, in this order:

1. ``insert_baseline``: the application's single-row INSERT rate with nothing attached, and a
   ``--rows``-row ``COPY`` (one transaction) with nothing attached;
2. the PL/Python trigger baselines (model cached in SD / fetched and unpickled per row), for
   single-row INSERTs and for the same ``COPY`` (what scoring inside the writer costs it);
3. the naive poller (INSERT rate while it runs, and its insert→prediction latency);
4. rowcast: the INSERT rate while it scores; a ``--rows``-row ``COPY`` into the deployed table,
   with rows/s from its commit to the last prediction row in ``rowcast.predictions``, to the
   last record on the predictions topic and to the last label learned, each process's CPU µs
   per row and peak RSS; then commit→prediction-row latency for single-row INSERTs at each
   fixed ``--rates`` (from ``rate // 1000`` writer sessions); the slot's largest retained WAL;
5. the learner, which learns every row in the table's commit order (the merge waits for every
   partition's watermark): labels/s over the bulk load, and at each rate the learning delay
   (commit of the labelled row -> learned) p50/p99.

Every comparison is a ratio computed from figures of this same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import psycopg

from bench import baselines, procstat
from rowcast.connectors.kafka_clients import make_consumer
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
    p.add_argument("--insert-pairs", type=int, default=5,
                   help="INSERT-rate runs with rowcast, each after one with it paused")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--score-batch", type=int, default=16)
    p.add_argument("--sink-batch", type=int, default=2000)
    p.add_argument("--source-batch", type=int, default=5000)
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--nice", type=int, default=0, help="ROWCAST_PROCESS_NICE for the pipeline")
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
        source_max_changes=args.source_batch, process_nice=args.nice, _env_file=None)


class Sampler:
    """Samples the rowcast processes' CPU/RSS and the slot's retained WAL in the background."""

    def __init__(self, pipeline: Pipeline, dsn: str, slot: str, every_s: float = 0.5) -> None:
        self.pipeline, self.dsn, self.slot, self.every_s = pipeline, dsn, slot, every_s
        self.max_retained_wal = 0
        self.peak: dict[str, float] = {}
        self._lock = threading.Lock()
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
        with self._lock:
            for name, proc in self.pipeline.procs.items():
                stat = procstat.read_tree(proc.pid)
                if stat is not None:
                    self.peak[name] = max(self.peak.get(name, 0.0), stat.peak_rss_mb)
                    out[name] = {"cpu_s": round(stat.cpu_s, 2),
                                 "peak_rss_mb": round(self.peak[name], 1)}
        return out

    def reset_peaks(self) -> dict[str, float]:
        """Each process's peak RSS so far; then the kernel's high-water marks (VmHWM) are
        reset (``clear_refs`` 5), so the peaks read afterwards are of what follows alone.

        Why: the load is measured after the writer runs, whose pauses and catch-ups left
        lifetime peaks of 187 to 230 MB in the learner from one run to the next; the 1M
        figure is of the 1M load, and the earlier peak is printed beside it."""
        before = {name: v["peak_rss_mb"] for name, v in self.stats().items()}
        with self._lock:
            for proc in self.pipeline.procs.values():
                for pid in procstat.process_tree(proc.pid):
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                        f.write("5")
            self.peak.clear()
        return before

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def predictions_written(conn: psycopg.Connection) -> int:
    """Rows inserted or updated in rowcast.predictions so far, from the statistics counters
    (a catalog lookup; each backend reports at most once a second, and a backend gone idle
    up to 10 s later)."""
    return conn.execute("SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM "
                        "pg_stat_user_tables WHERE schemaname = 'rowcast' "
                        "AND relname = 'predictions'").fetchone()[0]


def wait_for_predictions(conn: psycopg.Connection, first: int, last: int, timeout_s: float,
                         pipeline: Pipeline, written_before: int | None = None) -> None:
    """Until every row ``first..last`` has its prediction row. The figures come from
    ``written_at``, not from when this notices, so polling only has to be cheap: counting the
    range scans all of rowcast.predictions (no index on the id inside ``pk``), and doing that
    every 0.1 s during a 1M-row load took a large share of a core from the pipeline measured.
    With ``written_before`` (:func:`predictions_written` before the load) the count runs once
    the counter says the rows were written, or has not moved for a second."""
    deadline = time.monotonic() + timeout_s
    expected = last - first + 1
    written, moved = -1, time.monotonic()
    got = 0
    while time.monotonic() < deadline:
        dead = [n for n, up in pipeline.alive().items() if not up]
        if dead:
            raise SystemExit(f"rowcast {dead[0]} died:\n{pipeline.log_tail(dead[0])}")
        if written_before is not None:
            now = predictions_written(conn)
            if now != written:
                written, moved = now, time.monotonic()
            if now - written_before < expected and time.monotonic() - moved < 1.0:
                time.sleep(0.1)
                continue
            moved = time.monotonic()  # counted now: at most once a second while it stalls
        got = conn.execute("SELECT count(*) FROM rowcast.predictions WHERE deployment = 'bench' "
                           "AND (pk->>'id')::bigint BETWEEN %s AND %s", (first, last)).fetchone()[0]
        if got >= expected:
            return
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


def copy_load(conn: psycopg.Connection, table: str, n: int, seed: int = 5) -> tuple[float, object]:
    """One ``COPY`` of ``n`` rows in one transaction, as a bulk load is: its rows/s (from the
    start of the COPY to its commit) and the server's clock right after the commit."""
    rng = random.Random(seed)
    rows = [baselines.sample_row(rng) for _ in range(n)]
    started = time.perf_counter()
    with conn.transaction(), conn.cursor().copy(
            f"COPY {table} (age, income, credit_score, purchase_amount) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    rate = n / (time.perf_counter() - started)
    return rate, conn.execute("SELECT clock_timestamp()").fetchone()[0]


def last_on_topic(settings: Settings, topic: str) -> float:
    """The newest record timestamp (ms since the epoch, producer's CreateTime) on a topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        newest = 0
        for tp in parts:
            if ends[tp] == 0:
                continue
            consumer.seek(tp, ends[tp] - 1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = consumer.poll(timeout_ms=500).get(tp)
                if got:
                    newest = max(newest, got[-1].timestamp)
                    break
        return newest
    finally:
        consumer.close()


def learned_at(conn: psycopg.Connection, labelled: int, timeout_s: float, pipeline: Pipeline):
    """When the learner had learned ``labelled`` rows: the first version's creation time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT min(created_at) FROM rowcast.model_versions WHERE "
                           "deployment = 'bench' AND samples >= %s", (labelled,)).fetchone()
        if row[0] is not None:
            return row[0]
        dead = [n for n, up in pipeline.alive().items() if not up]
        if dead:
            raise SystemExit(f"rowcast {dead[0]} died:\n{pipeline.log_tail(dead[0])}")
        time.sleep(0.2)
    raise TimeoutError("the learner did not learn every row in time")


def drive_at_rate(dsn: str, table: str, rate: float, seconds: float) -> int:
    """Single-row INSERTs (one autocommit transaction each, as an application writes) at
    ``rate`` rows/s for ``seconds``, from as many writer sessions as the rate needs (one
    session commits at most ~2,000 rows/s with fsync on): the rows sent."""
    sessions = max(1, int(rate // 1000))
    sql = (f"INSERT INTO {table} (age, income, credit_score, purchase_amount) "
           "VALUES (%s, %s, %s, %s)")
    sent = [0] * sessions

    def writer(i: int) -> None:
        rng = random.Random(int(rate) + i)
        share = rate / sessions
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                due = int(elapsed * share) - sent[i]
                for _ in range(due):
                    conn.execute(sql, baselines.sample_row(rng))
                sent[i] += max(due, 0)
                if due <= 0:
                    time.sleep(0.001)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent)


def measure_baselines(dsn: str, n: int, copy_rows: int) -> dict:
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        baselines.create_table(conn, "bench_plain")
        runs = baselines.insert_runs(dsn, "bench_plain", n)
        out["insert_baseline_rows_per_s"] = statistics.median(runs)
        out["insert_baseline_runs"] = [round(r) for r in runs]
        baselines.create_table(conn, "bench_copy_plain")
        out["copy_baseline_rows_per_s"] = copy_load(conn, "bench_copy_plain", copy_rows)[0]
        conn.execute("DROP TABLE bench_copy_plain")
        if baselines.plpython_available(conn):
            for cached in (True, False):
                table = f"bench_trigger_{'cached' if cached else 'per_row'}"
                baselines.create_table(conn, table)
                baselines.install_trigger(conn, table, cached)
                out[f"{table}_rows_per_s"] = baselines.insert_throughput(dsn, table, n)
                scored = conn.execute(f"SELECT count(predicted) FROM {table}").fetchone()[0]
                assert scored == n, f"the trigger scored {scored} of {n} rows"
            # a bulk load through the same cached-model trigger: what scoring inside the
            # writer costs a COPY (compared with the plain COPY below and rowcast's)
            baselines.create_table(conn, "bench_copy_trigger")
            baselines.install_trigger(conn, "bench_copy_trigger", True)
            out["copy_with_trigger_rows_per_s"] = copy_load(conn, "bench_copy_trigger",
                                                            copy_rows)[0]
            conn.execute("DROP TABLE bench_copy_trigger")
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


@contextlib.contextmanager
def paused(pipeline: Pipeline, names: Iterable[str] | None = None) -> Iterator[None]:
    """rowcast's processes (``names``: only those) stopped (SIGSTOP to each process group) for
    a baseline run, then continued: nothing of rowcast runs, but the table, the slot and the
    services are those of the run with rowcast beside it. Kept short (one run of a second or
    so), well inside the consumers' session timeout, so no group rebalances when they continue."""
    chosen = pipeline.procs if names is None else {n: pipeline.procs[n] for n in names}
    groups = [proc.pid for proc in chosen.values() if proc.poll() is None]
    for pid in groups:
        os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in groups:
            os.killpg(pid, signal.SIGCONT)


def change_topic_partitions(settings: Settings) -> int:
    """How many partitions the bench table's change topic has."""
    consumer = make_consumer(settings, f"{settings.topic_prefix}-bench-layout")
    try:
        return len(consumer.partitions_for_topic(settings.source_topic("public", TABLE)) or ())
    finally:
        consumer.close()


def service_pids(stack: DevStack) -> dict[str, int]:
    """The dev stack's PostgreSQL postmaster and Kafka broker: their CPU (with the backends,
    which are the postmaster's children) is what rowcast costs the services per row."""
    pids = {}
    postmaster = stack.postgres.data_dir / "postmaster.pid"
    if postmaster.exists():
        pids["postgres"] = int(postmaster.read_text().split()[0])
    kafka_pid = getattr(stack.kafka, "pid_file", None)
    if kafka_pid is not None and kafka_pid.exists():
        pids["kafka"] = int(kafka_pid.read_text().split()[0])
    return pids


def services_cpu_s(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        stat = procstat.read_tree(pid)
        if stat is not None:
            out[name] = stat.cpu_s
    return out


def measure_rowcast(settings: Settings, args: argparse.Namespace, dsn: str,
                    services: dict[str, int] | None = None) -> dict:
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
            # the layout every figure below is of: each source round writes a record to every
            # partition, so a topic created with the broker's defaults (one partition; it
            # happened until kafka-python's auto-creation was turned off) measures another
            # pipeline
            out["change_topic_partitions"] = change_topic_partitions(settings)
            if out["change_topic_partitions"] != args.partitions:
                raise SystemExit(f"bench: the change topic has {out['change_topic_partitions']} "
                                 f"partition(s), not --partitions {args.partitions}")

            # a first run warms what a running deployment has warm (the broker's JIT-compiled
            # request paths: its CPU per row halved after one), then the median of three,
            # each started with the pipeline caught up, as the baseline's runs start idle
            def caught_up() -> None:
                wait_for_predictions(conn, 1, max_id(conn), 300, pipeline)

            baselines.insert_runs(dsn, TABLE, args.insert_rows, 1, caught_up)
            runs, paused_runs, source_runs = [], [], []
            downstream = [n for n in pipeline.procs if n != "source"]
            for i in range(args.insert_pairs):
                # each run with rowcast beside a run, just before it, with rowcast's processes
                # stopped: same table, same server, same moment (the first baseline is minutes
                # and two bulk loads away, on a fresh cluster); between them, a run with the
                # source alone (the worker, learner and sink stopped): what capturing the
                # changes costs the writer, the floor of any logical-decoding pipeline here
                with paused(pipeline):
                    paused_runs.append(baselines.insert_throughput(dsn, TABLE, args.insert_rows,
                                                                   seed=100 + i))
                with paused(pipeline, downstream):
                    source_runs.append(baselines.insert_throughput(dsn, TABLE, args.insert_rows,
                                                                   seed=200 + i))
                caught_up()
                runs.append(baselines.insert_throughput(dsn, TABLE, args.insert_rows, seed=1 + i))
                caught_up()
            out["insert_with_rowcast_rows_per_s"] = statistics.median(runs)
            out["insert_with_rowcast_runs"] = [round(r) for r in runs]
            out["insert_rowcast_paused_rows_per_s"] = statistics.median(paused_runs)
            out["insert_rowcast_paused_runs"] = [round(r) for r in paused_runs]
            out["insert_with_source_only_rows_per_s"] = statistics.median(source_runs)
            out["insert_with_source_only_runs"] = [round(r) for r in source_runs]

            first = max_id(conn) + 1
            labelled = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE purchase_amount "
                                    "IS NOT NULL").fetchone()[0] + args.rows
            services_before = services_cpu_s(services or {})
            peak_before_load = sampler.reset_peaks()
            cpu_before = sampler.stats()
            written = predictions_written(conn)
            copy_rate, committed = copy_load(conn, TABLE, args.rows)
            wait_for_predictions(conn, first, first + args.rows - 1, 600 + args.rows / 1000,
                                 pipeline, written)
            last_row = conn.execute(
                "SELECT max(written_at) FROM rowcast.predictions WHERE deployment = 'bench' "
                "AND (pk->>'id')::bigint >= %s", (first,)).fetchone()[0]
            cpu_scored = sampler.stats()
            last_record_ms = last_on_topic(settings, settings.predictions_topic("bench"))
            last_learned = learned_at(conn, labelled, 900 + args.rows / 500, pipeline)
            cpu_after = sampler.stats()
            services_after = services_cpu_s(services or {})
            commit_s = committed.timestamp()
            span = {"prediction_rows": (last_row - committed).total_seconds(),
                    "predictions_topic": last_record_ms / 1000 - commit_s,
                    "labels_learned": (last_learned - committed).total_seconds()}
            out["end_to_end"] = {
                "rows": args.rows,
                "copy_rows_per_s": round(copy_rate),
                # from the COPY's commit to the last one of each
                "rows_per_s": {k: round(args.rows / v) for k, v in span.items()},
                "seconds_after_commit": {k: round(v, 2) for k, v in span.items()},
                "cpu_s_per_process": {n: round(cpu_after[n]["cpu_s"] - cpu_before[n]["cpu_s"], 1)
                                      for n in cpu_after},
                # CPU per row of each process until the last prediction row (the learner's
                # until the last label learned)
                "cpu_us_per_row": {
                    n: round(((cpu_after if n == "learner" else cpu_scored)[n]["cpu_s"]
                              - cpu_before[n]["cpu_s"]) / args.rows * 1e6, 1)
                    for n in cpu_after},
                # over the load alone (from its COPY to the last label learned); the writer
                # runs before it made their own peaks, printed beside
                "peak_rss_mb": {n: cpu_after[n]["peak_rss_mb"] for n in cpu_after},
                "peak_rss_mb_before_load": peak_before_load,
                # the services on the same two cores, from the COPY (its own cost included)
                # to the last label learned: PostgreSQL (decoding for the slot, the sink's
                # upserts, the learner's checkpoints) and the Kafka broker
                "services_cpu_us_per_row": {
                    n: round((services_after[n] - services_before[n]) / args.rows * 1e6, 1)
                    for n in services_after if n in services_before},
            }
            out["learner"] = {"labels_per_s_in_commit_order":
                              round(args.rows / span["labels_learned"])}

            out["latency_ms_at_rate"] = {}
            out["learning_delay_ms_at_rate"] = {}
            for rate in (float(r) for r in args.rates.split(",")):
                first = max_id(conn) + 1
                rate_started = conn.execute("SELECT clock_timestamp()").fetchone()[0]
                written = predictions_written(conn)
                sent = drive_at_rate(dsn, TABLE, rate, args.rate_seconds)
                wait_for_predictions(conn, first, first + sent - 1, 300, pipeline, written)
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
    out = {k.replace("_rows_per_s", "_vs_baseline"): round(result[k] / base, 3)
           for k in keys if isinstance(result.get(k), float)}
    paused_base = result.get("insert_rowcast_paused_rows_per_s")
    if paused_base and isinstance(result.get("insert_with_rowcast_rows_per_s"), float):
        # the writer with rowcast scoring, against the same writer minutes later on the same
        # table with rowcast stopped (the pairs alternate): what rowcast itself costs it
        out["insert_with_rowcast_vs_paused"] = round(
            result["insert_with_rowcast_rows_per_s"] / paused_base, 3)
    if paused_base and isinstance(result.get("insert_with_source_only_rows_per_s"), float):
        # the same writer with only the source capturing its changes (worker, learner and
        # sink stopped): the ceiling insert_with_rowcast_vs_paused can reach on these cores
        out["insert_with_source_only_vs_paused"] = round(
            result["insert_with_source_only_rows_per_s"] / paused_base, 3)
    copy_base = result.get("copy_baseline_rows_per_s")
    e2e = result.get("end_to_end", {})
    if copy_base:
        if isinstance(result.get("copy_with_trigger_rows_per_s"), float):
            out["copy_with_trigger_vs_copy"] = round(
                result["copy_with_trigger_rows_per_s"] / copy_base, 3)
        if e2e.get("copy_rows_per_s"):
            out["copy_with_rowcast_vs_copy"] = round(e2e["copy_rows_per_s"] / copy_base, 3)
        if isinstance(result.get("copy_with_trigger_rows_per_s"), float) and e2e:
            # rowcast scores (and learns) the load at this multiple of the rate at which the
            # trigger lets the writer load it at all
            out["scored_rows_per_s_vs_trigger_copy"] = round(
                e2e["rows_per_s"]["prediction_rows"] / result["copy_with_trigger_rows_per_s"], 3)
    return out


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
            result.update(measure_baselines(dsn, args.insert_rows, args.rows))
        print("measuring rowcast ...", file=sys.stderr)
        result.update(measure_rowcast(settings, args, dsn, service_pids(stack)))
        result["ratios"] = ratios(result)
    finally:
        stack.reset()
    for key, value in list(result.items()):
        if isinstance(value, float):
            result[key] = round(value)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
