"""Publishing benchmark: the CPU a worker spends to put one scored batch on Kafka, acked.

    python -m bench.publish [--batches 40] [--rows 500] [--repeat 3] [--bootstrap HOST:PORT]

Starts a private Kafka broker (as the test fixtures do) unless ``--bootstrap`` names one, and
prints JSON. Every figure is CPU time of this whole process (``time.process_time``: the Python
thread and the client's background threads alike; the broker is another process) divided by
the records or events sent, best of ``--repeat`` runs of ``--batches`` batches of ``--rows``:

- ``predictions``: one record per row, keyed, each batch waited for (acks=all, idempotent):
  ``kafka_python`` (``AckedSends`` over ``make_producer``, the publisher before issue 15),
  ``confluent`` (:class:`rowcast.streams.publishing.BatchPublisher` as the worker runs it, a
  delivery report per record); ``encode_only`` is the JSON encoding both include;
- ``labels``: per label event, one record per event (kafka-python as before, and confluent)
  against one batch record per deployment per batch (confluent, as the worker runs it);
- ``batch_ack_ms_p50``: wall time of one batch's publish, send to last ack.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import median

from rowcast.connectors.fast_kafka import ConfluentSends, make_fast_producer
from rowcast.connectors.kafka_clients import AckedSends, ensure_deployment_topics, make_producer
from rowcast.core.label_events import LabelEvent
from rowcast.core.prediction import PredictionRecord
from rowcast.core.settings import Settings
from rowcast.ops.devstack.kafka import KafkaServer
from rowcast.ops.devstack.process import free_port
from rowcast.streams.publishing import BatchPublisher

DEPLOYMENT = "bench"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--rows", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--bootstrap", help="an existing broker (default: start a private one)")
    return p.parse_args(argv)


def predictions(batches: int, rows: int) -> list[list[PredictionRecord]]:
    now = 1_700_000_000_000_000
    return [[PredictionRecord(DEPLOYMENT, "linear_regression", 3, "public", "t",
                              {"id": b * rows + i}, 1.5 * i, 1.5 * i, 1000 + i, now + i, now + i)
             for i in range(rows)] for b in range(batches)]


def labels(batches: int, rows: int) -> list[list[LabelEvent]]:
    return [[LabelEvent("labelled", DEPLOYMENT, "1.1", {"id": b * rows + i}, "t:0",
                        (b * rows + i, 1, 1), i, {"a": 0.5 * i, "b": float(i % 7), "c": "Oslo"},
                        2.0 * i) for i in range(rows)] for b in range(batches)]


def timed(run: Callable[[list], None], batches: list[list], repeat: int) -> dict:
    """Best-of-``repeat`` CPU µs per item, and the median wall ms per batch of the best run."""
    items = sum(len(b) for b in batches)
    best_cpu, best_walls = float("inf"), [0.0]
    for _ in range(repeat):
        walls = []
        cpu0 = time.process_time()
        for batch in batches:
            t0 = time.perf_counter()
            run(batch)
            walls.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        if cpu < best_cpu:
            best_cpu, best_walls = cpu, walls
    return {"cpu_us_per_item": round(best_cpu / items * 1e6, 2),
            "batch_ack_ms_p50": round(median(best_walls) * 1000, 2), "items": items}


def measure(settings: Settings, args: argparse.Namespace) -> dict:
    ensure_deployment_topics(settings, [DEPLOYMENT])
    preds = predictions(args.batches, args.rows)
    events = labels(args.batches, args.rows)
    pred_topic = settings.predictions_topic(DEPLOYMENT)
    label_topic = settings.labels_topic(DEPLOYMENT)
    kp = make_producer(settings)
    confluent = make_fast_producer(settings)
    publisher = BatchPublisher(settings, confluent)

    def kafka_python_predictions(batch: list[PredictionRecord]) -> None:
        sends = AckedSends(kp)
        for p in batch:
            sends.send(pred_topic, p.key_bytes(), p.to_json())
        sends.wait()

    def encode_only(batch: list[PredictionRecord]) -> None:
        for p in batch:
            p.key_bytes()
            p.to_json()

    def kafka_python_label_each(batch: list[LabelEvent]) -> None:
        sends = AckedSends(kp)
        for e in batch:
            sends.send(label_topic, e.key_bytes(), e.to_json(), partition=0)
        sends.wait()

    def confluent_label_each(batch: list[LabelEvent]) -> None:
        sends = ConfluentSends(confluent)
        for e in batch:
            sends.send(label_topic, e.key_bytes(), e.to_json(), partition=0)
        sends.wait()

    # warm up every client (connections, metadata, producer ids)
    kafka_python_predictions(preds[0][:10])
    publisher.publish(preds[0][:10], (), events[0][:10])
    r = args.repeat
    result = {
        "rows_per_batch": args.rows, "batches": args.batches, "repeat": r,
        "predictions": {
            "encode_only": timed(encode_only, preds, r),
            "kafka_python": timed(kafka_python_predictions, preds, r),
            "confluent": timed(publisher.publish, preds, r),
        },
        "labels": {
            "kafka_python_one_record_each": timed(kafka_python_label_each, events, r),
            "confluent_one_record_each": timed(confluent_label_each, events, r),
            "confluent_one_record_per_batch": timed(
                lambda batch: publisher.publish((), (), batch), events, r),
        },
    }
    kp.close()
    p = result["predictions"]
    result["predictions"]["kafka_python_vs_confluent"] = round(
        p["kafka_python"]["cpu_us_per_item"] / p["confluent"]["cpu_us_per_item"], 1)
    lab = result["labels"]
    lab["one_each_kafka_python_vs_batched"] = round(
        lab["kafka_python_one_record_each"]["cpu_us_per_item"]
        / lab["confluent_one_record_per_batch"]["cpu_us_per_item"], 1)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    name = f"pub{uuid.uuid4().hex[:6]}"
    server = None
    folder = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        folder = Path(tempfile.mkdtemp(prefix="rowcast-bench-publish-"))
        server = KafkaServer(folder / "kafka", free_port(), free_port(),
                             cache_dir=Settings(_env_file=None).cache_dir)
        print(f"starting a private Kafka broker in {folder} ...", file=sys.stderr)
        server.start()
        bootstrap = server.bootstrap
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=name, _env_file=None)
    try:
        print(json.dumps(measure(settings, args), indent=2))
    finally:
        if server is not None:
            server.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
