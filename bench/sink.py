"""The Postgres sink's cost per row, piece by piece, on a private dev stack; printed as JSON.

    python -m bench.sink [--records 120000] [--partitions 4] [--batch 2000]

Fills a predictions topic with ``--records`` prediction records (distinct keys), then measures,
each on its own:

1. ``consume``: reading every record with kafka-python (the sink's consumer before issue 15)
   and with confluent-kafka (librdkafka), client CPU µs per record;
2. ``decode``: ``PredictionRecord.from_json``, µs per record;
3. ``upsert``: :func:`rowcast.connectors.pg_sink.upsert` per batch, into an empty table
   (inserts) and again with newer LSNs (every row updated): client CPU and the Postgres
   backend's CPU (read from /proc, so the server side is measured, not guessed), µs per row,
   and the wall time;
4. ``sink``: the whole :class:`PredictionSink` (as ``rowcast sink`` builds it) from the
   beginning of the topic until every record is in ``rowcast.predictions``: rows/s, client and
   backend CPU µs per row.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg

from bench import procstat
from rowcast.connectors import pg_sink
from rowcast.connectors.kafka_clients import ensure_topics, make_consumer, make_producer
from rowcast.connectors.schema import init_database
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import Settings
from rowcast.ops.devstack.process import free_port
from rowcast.ops.devstack.stack import DevStack

DEPLOYMENT = "sinkbench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=120_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch", type=int, default=2000, help="records per upsert (sink_batch_size)")
    p.add_argument("--state-dir", type=Path, default=Path(".rowcast/bench"))
    return p.parse_args(argv)


def bench_settings(args: argparse.Namespace) -> Settings:
    name = f"sinkbench{uuid.uuid4().hex[:6]}"
    return Settings(
        postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
        kafka_bootstrap=f"127.0.0.1:{free_port()}", topic_prefix=name, slot_name=name,
        publication_name=name, state_dir=args.state_dir.resolve() / name,
        topic_partitions=args.partitions, sink_batch_size=args.batch, sink_metrics_port=0,
        _env_file=None)


def records(n: int, lsn_base: int = 10_000, version: int = 1) -> list[PredictionRecord]:
    now_us = time.time_ns() // 1000
    return [PredictionRecord(DEPLOYMENT, "linear_regression", version, "public", "bench_rows",
                             {"id": i}, 100.0 + i * 0.25, 100.0 + i * 0.25, lsn_base + i,
                             now_us - 5_000_000, now_us) for i in range(1, n + 1)]


class Cpu:
    """Client CPU (this process, all threads) and one Postgres backend's CPU over a block."""

    def __init__(self, backend_pid: int | None = None) -> None:
        self.backend_pid = backend_pid
        self.client_s = self.server_s = self.wall_s = 0.0

    def __enter__(self) -> Cpu:
        self._c, self._w = time.process_time(), time.perf_counter()
        self._s = self._backend()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client_s += time.process_time() - self._c
        self.wall_s += time.perf_counter() - self._w
        self.server_s += self._backend() - self._s

    def _backend(self) -> float:
        stat = procstat.read(self.backend_pid) if self.backend_pid else None
        return stat.cpu_s if stat else 0.0

    def per_row(self, n: int) -> dict:
        out = {"client_us_per_row": round(self.client_s / n * 1e6, 2),
               "wall_s": round(self.wall_s, 3), "rows_per_s_wall": round(n / self.wall_s)}
        if self.backend_pid:
            out["server_us_per_row"] = round(self.server_s / n * 1e6, 2)
        return out


def produce(settings: Settings, topic: str, recs: list[PredictionRecord]) -> None:
    producer = make_producer(settings)
    for r in recs:
        producer.send(topic, key=r.key_bytes(), value=r.to_json())
    producer.flush()
    producer.close()


def consume_kafka_python(settings: Settings, topic: str, n: int, batch: int) -> dict:
    consumer = make_consumer(settings, f"{settings.topic_prefix}-kp-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    got = 0
    with Cpu() as cpu:
        while got < n:
            for messages in consumer.poll(timeout_ms=500, max_records=batch).values():
                got += len(messages)
    consumer.close()
    return cpu.per_row(got)


def consume_confluent(settings: Settings, topic: str, n: int, batch: int) -> dict:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"{settings.topic_prefix}-ck-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = 0
    with Cpu() as cpu:
        while got < n:
            got += sum(1 for m in consumer.consume(batch, 0.5) if m.error() is None)
    consumer.close()
    return cpu.per_row(got)


def decode(values: list[bytes]) -> dict:
    with Cpu() as cpu:
        for v in values:
            PredictionRecord.from_json(v)
    return cpu.per_row(len(values))


def upsert_batches(conn: psycopg.Connection, recs: list[PredictionRecord], batch: int) -> dict:
    pid = conn.info.backend_pid
    with Cpu(pid) as cpu:
        for start in range(0, len(recs), batch):
            pg_sink.upsert(conn, recs[start:start + batch])
    return cpu.per_row(len(recs))


def run_sink(settings: Settings, n: int) -> dict:
    """The sink as ``rowcast sink`` runs it, from offset 0 until every record is written."""
    from rowcast.streams import processes

    stop = threading.Event()
    with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
        conn.execute("TRUNCATE rowcast.predictions")
        before = conn.execute("SELECT pid FROM pg_stat_activity").fetchall()
        thread = threading.Thread(target=processes.run_sink, args=(settings, stop),
                                  daemon=True)
        started_cpu, started = time.process_time(), time.perf_counter()
        thread.start()
        backend = None
        while True:
            count = conn.execute("SELECT count(*) FROM rowcast.predictions").fetchone()[0]
            if backend is None:
                pids = {r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()")} - {r[0] for r in before}
                backend = next(iter(pids), None)
            if count >= n:
                break
            if not thread.is_alive():
                raise SystemExit("the sink stopped")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        client = time.process_time() - started_cpu
        server = procstat.read(backend).cpu_s if backend else None  # since its connect
        stop.set()
        thread.join(30)
    out = {"rows_per_s": round(n / wall), "client_us_per_row": round(client / n * 1e6, 2),
           "wall_s": round(wall, 2), "note": "includes start-up and group join"}
    if server is not None:
        out["server_us_per_row"] = round(server / n * 1e6, 2)
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
        topic = settings.predictions_topic(DEPLOYMENT)
        ensure_topics(settings, [topic, settings.dlq_topic])
        recs = records(args.records)
        values = [r.to_json() for r in recs]
        print("producing ...", file=sys.stderr)
        produce(settings, topic, recs)
        print("consuming ...", file=sys.stderr)
        result["consume"] = {
            "kafka_python": consume_kafka_python(settings, topic, args.records, args.batch),
            "confluent_kafka": consume_confluent(settings, topic, args.records, args.batch)}
        result["decode"] = decode(values)
        print("upserting ...", file=sys.stderr)
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_database(conn, settings)
            conn.execute("TRUNCATE rowcast.predictions")
            result["upsert"] = {
                "insert_new_keys": upsert_batches(conn, recs, args.batch),
                "update_newer_lsn": upsert_batches(conn, records(args.records, 10**9), args.batch),
                "replay_older_noop": upsert_batches(conn, recs, args.batch),
            }
        print("running the sink ...", file=sys.stderr)
        result["sink"] = run_sink(settings, args.records)
    finally:
        stack.reset()
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
