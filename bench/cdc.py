"""CDC source benchmark: one bulk COPY decoded and published, and insert→topic latency.

    python -m bench.cdc [--rows 1000000] [--rate 1000] [--rate-seconds 20]
                        [--formats rowcast,debezium]

Starts a private dev stack and only ``rowcast source`` (a fresh process per format, each on its
own table), then prints JSON with, per ``source_format``:

- ``copy``: one ``COPY`` of ``--rows`` rows in one transaction; the rows/s from its commit until
  the source has every row acknowledged by Kafka (the slot's confirmed position passes the
  COPY's commit: what the source decodes and publishes), its peak RSS and CPU µs per row;
- ``steady``: single-row INSERTs at ``--rate`` rows/s; latency from each row's commit to the
  broker appending its record (topic with ``message.timestamp.type=LogAppendTime``), p50/p99;

and ``rowcast_vs_debezium``: the ratio of the two COPY rates.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from pathlib import Path
from statistics import quantiles

import orjson
import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic, OffsetSpec

from bench import procstat
from rowcast.connectors.kafka_clients import make_admin
from rowcast.connectors.schema import init_database
from rowcast.connectors.slot import confirmed_lsn, current_wal_lsn, watch_table
from rowcast.core.change_batch import ChangeBatch, is_batch
from rowcast.core.settings import Settings
from rowcast.ops.devstack.process import free_port
from rowcast.ops.devstack.stack import DevStack
from rowcast.ops.pipeline import Pipeline

TABLE = "cdc_bench"
PARTITIONS = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--rate-seconds", type=float, default=20.0)
    p.add_argument("--formats", default="rowcast,debezium")
    p.add_argument("--state-dir", type=Path, default=Path(".rowcast/bench"))
    return p.parse_args(argv)


def topic_end(admin: KafkaAdminClient, topic: str, partitions: int) -> int:
    ends = admin.list_partition_offsets(
        {TopicPartition(topic, p): OffsetSpec.LATEST for p in range(partitions)})
    return sum(o.offset for o in ends.values())


def measure_copy(settings: Settings, conn: psycopg.Connection, pipeline: Pipeline, table: str,
                 rows: int) -> dict:
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            stat = procstat.read(pipeline.procs["source"].pid)
            if stat:
                peak[0] = max(peak[0], stat.peak_rss_mb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    with conn.transaction(), conn.cursor() as cur, \
            cur.copy(f"COPY {table} (id, x, label) FROM STDIN") as copy:
        for i in range(1, rows + 1):
            copy.write_row((i, i * 0.5, f"row {i}"))
    committed = time.monotonic()
    past = current_wal_lsn(conn)
    cpu_before = procstat.read(pipeline.procs["source"].pid).cpu_s
    while confirmed_lsn(conn, settings.slot_name) < past:
        if not pipeline.alive()["source"]:
            raise SystemExit(pipeline.log_tail("source"))
        time.sleep(0.05)
    done = time.monotonic()
    cpu = procstat.read(pipeline.procs["source"].pid).cpu_s - cpu_before
    stop.set()
    sampler.join()
    return {"rows": rows, "copy_s": round(committed - start, 2),
            "publish_s_after_commit": round(done - committed, 2),
            "rows_per_s": round(rows / (done - committed)),
            "source_cpu_us_per_row": round(cpu / rows * 1e6, 2),
            "source_peak_rss_mb": round(peak[0], 1)}


def measure_steady(settings: Settings, conn: psycopg.Connection, table: str, topic: str,
                   first_id: int, rate: int, seconds: float) -> dict:
    consumer = KafkaConsumer(topic, **settings.kafka_client_config(), group_id=None,
                             auto_offset_reset="latest", enable_auto_commit=False,
                             fetch_max_wait_ms=10)
    consumer.poll(timeout_ms=1000)  # joined, at the end of the topic
    total = int(rate * seconds)
    latencies: list[float] = []

    def read() -> None:
        while len(latencies) < total:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    if is_batch(r.headers):
                        latencies.extend(r.timestamp - commit_us / 1000
                                         for commit_us in ChangeBatch.decode(r.value).commit_us)
                    elif r.value is not None:
                        commit_us = orjson.loads(r.value)["source"]["ts_us"]
                        latencies.append(r.timestamp - commit_us / 1000)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    for n in range(total):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn.execute(f"INSERT INTO {table} (id, x, label) VALUES (%s, 1.0, 'steady')",
                     (first_id + n,))
    reader.join(timeout=60)
    consumer.close()
    cuts = quantiles(latencies, n=100)
    return {"rate": rate, "rows": total, "received": len(latencies),
            "insert_to_topic_ms_p50": round(cuts[49], 1), "insert_to_topic_ms_p99": round(cuts[98], 1)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = f"cdc{uuid.uuid4().hex[:6]}"
    settings = Settings(
        postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
        kafka_bootstrap=f"127.0.0.1:{free_port()}", topic_prefix=name, slot_name=name,
        publication_name=name, state_dir=args.state_dir.resolve() / name, _env_file=None)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    stack = DevStack(settings)
    print(f"starting a private dev stack in {settings.state_dir} ...", file=sys.stderr)
    stack.up()
    dsn = settings.postgres_dsn.get_secret_value()
    result: dict = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            init_database(conn, settings)
            for fmt in args.formats.split(","):
                table = f"{TABLE}_{fmt}"
                topic = settings.source_topic("public", table)
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, x float8, label text)")
                watch_table(conn, settings.publication_name, "public", table)
                admin = make_admin(settings)
                admin.create_topics([NewTopic(topic, PARTITIONS, 1, topic_configs={
                    "message.timestamp.type": "LogAppendTime"})])
                admin.close()
                run = settings.model_copy(update={"source_format": fmt})
                with Pipeline(run, settings.state_dir / f"logs-{fmt}", ("source",)) as pipeline:
                    print(f"{fmt}: COPY of {args.rows} rows ...", file=sys.stderr)
                    result[fmt] = {"copy": measure_copy(run, conn, pipeline, table, args.rows)}
                    print(f"{fmt}: steady {args.rate} rows/s ...", file=sys.stderr)
                    result[fmt]["steady"] = measure_steady(run, conn, table, topic,
                                                           args.rows + 1, args.rate,
                                                           args.rate_seconds)
        if "rowcast" in result and "debezium" in result:
            result["rowcast_vs_debezium"] = round(result["rowcast"]["copy"]["rows_per_s"]
                                                  / result["debezium"]["copy"]["rows_per_s"], 2)
    finally:
        stack.reset()
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")


if __name__ == "__main__":
    main()
