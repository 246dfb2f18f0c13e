"""Worker benchmark: the scorer's own Python work per row, without faust or Kafka.

    python -m bench.worker [--rows 20000] [--batch 500] [--model linear_regression] [--repeat 5]

What a worker spends per row between faust handing it records and the publisher sending them,
on synthetic rows of a deployed table (three numbers, a category, a numeric label), through
the real :class:`rowcast.streams.scorer.BatchScorer` with a publisher that only keeps what it is
given. Both formats of a change topic are measured: ``rowcast`` (one
:class:`~rowcast.core.change_batch.ChangeBatch` record per ``--batch`` rows, the source's
default) and ``debezium`` (one envelope per row). Figures are µs of CPU per row
(``time.process_time``: the box is shared), best of ``--repeat``:

- ``parse``: records to change events (``BatchScorer._parse``);
- ``features``: rows to feature dicts (``OnlineModel.features``), alone;
- ``predict``: what scoring the feature dicts costs alone (``OnlineModel.score_many`` per batch
  where the model is scored at once, ``vectorised``; else ``OnlineModel.score`` per row);
- ``handle``: ``ServingSet.handle`` whole (features, predict, prediction records, label events);
- ``records``: ``handle`` minus ``features`` and ``predict``: building prediction records and
  label events, routing;
- ``score``: ``BatchScorer.score`` whole (parse + handle + what the publisher is handed).

The model is trained on other rows first, so its weights are not all zero; a few scored rows
carry a category it never saw and a NULL feature.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from rowcast.core.envelope import SourceInfo, build_value
from rowcast.core.keys import encode_key
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.scoring import OnlineModel
from rowcast.models.serving import ServingSet
from rowcast.streams.scorer import BatchScorer

FEATURES = (Feature("a", "number"), Feature("b", "number"), Feature("c", "number"),
            Feature("city", "category"))
TOPIC = "rowcast.public.t"
CITIES = ("Lyon", "Oslo", "Lima", "Rome")


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


class Keep:
    """A publisher that acknowledges everything at once."""

    def publish(self, predictions: Any, dead_letters: Any = (), labels: Any = ()) -> int:
        self.last = (predictions, dead_letters, labels)
        return len(predictions)


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.gauss(0, 1), rng.uniform(0, 10)
        city = rng.choice(CITIES) if i % 97 else "Nowhere"  # a category the model never saw
        out.append({"id": i, "a": a, "b": b if i % 89 else None, "c": float(i % 13),
                    "city": city, "y": 2 * a + 0.5 * (b or 0) + rng.gauss(0, 0.3)})
    return out


def trained(model: str) -> OnlineModel:
    d = Deployment("bench", "public", "t", "y", FEATURES, model, ("id",))
    m = OnlineModel.fresh(d)
    for r in rows(3000, seed=7):
        y = r["y"] if m.spec.task == "regression" else r["y"] > 2.5
        m.learn(m.features(r), y)
    return m


def debezium_messages(data: list[dict[str, Any]]) -> list[Msg]:
    out = []
    for i, r in enumerate(data):
        source = SourceInfo("rowcast", "app", "public", "t", 1000 + 10 * i, 5 + i // 50,
                            1_700_000_000_000_000 + i, commit_lsn=1000 + 10 * i + 5)
        value = build_value(op="c", before=None, after=r, source=source, tx_order=1 + i % 50,
                            now_us=1_700_000_000_000_000 + i)
        out.append(Msg(TOPIC, 0, i, encode_key({"id": r["id"]}), orjson.dumps(value)))
    return out


def batch_messages(data: list[dict[str, Any]], size: int) -> list[Msg] | None:
    try:
        from rowcast.core.change_batch import BATCH_HEADER, BATCH_KEY, ChangeBatch
    except ImportError:
        return None
    out = []
    for start in range(0, len(data), size):
        batch = ChangeBatch("rowcast", "app", "public", "t", tuple(data[0]), ("id",))
        for i in range(start, min(start + size, len(data))):
            batch.add("c", None, data[i], lsn=1000 + 10 * i, commit_lsn=1000 + 10 * i + 5,
                      tx_order=1 + i % 50, xid=5 + i // 50, commit_us=1_700_000_000_000_000 + i)
        out.append(Msg(TOPIC, 0, len(out), BATCH_KEY, batch.encode(now_us=1),
                       [(BATCH_HEADER, b"1")]))
    return out


def best(repeat: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        started = time.process_time()  # CPU time: the box is shared, wall time is not ours
        run()
        times.append(time.process_time() - started)
    return min(times)


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def measure(fmt: str, msgs: list[Msg], model: OnlineModel, n: int, per_call: int,
            repeat: int) -> dict[str, Any]:
    serving = ServingSet([model])
    scorer = BatchScorer(serving, Keep())
    calls = chunks(msgs, per_call)  # what one take_events batch hands the agent
    parsed = [scorer._parse(c)[0] for c in calls]
    assert sum(map(len, parsed)) == n, "every row parses"
    xs = [[model.features(e.after) for e in events] for events in parsed]
    predict_many = _batch_predictor(model)

    def predict() -> None:
        for batch in xs:
            if predict_many is not None:
                predict_many(batch)
            else:
                for x in batch:
                    model.score(x)

    us = 1e6 / n
    out = {
        "parse": best(repeat, lambda: [scorer._parse(c) for c in calls]) * us,
        "features": best(repeat, lambda: [[model.features(e.after) for e in events]
                                          for events in parsed]) * us,
        "predict": best(repeat, predict) * us,
        "handle": best(repeat, lambda: [serving.handle(events) for events in parsed]) * us,
    }
    out["records"] = out["handle"] - out["features"] - out["predict"]

    async def score_all() -> None:
        for c in calls:
            await scorer.score(c)

    out["score"] = best(repeat, lambda: asyncio.run(score_all())) * us
    scorer.sender.shutdown()
    result = {k: round(v, 2) for k, v in out.items()}
    result["vectorised"] = predict_many is not None
    return result


def _batch_predictor(model: OnlineModel) -> Callable[[list[dict]], Any] | None:
    """The model's batch scoring when it has one (at once for linear models)."""
    if not hasattr(model, "score_many"):
        return None
    try:
        from rowcast.models.batch_scoring import linear_plan
    except ImportError:
        return model.score_many
    return model.score_many if linear_plan(model.estimator) is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="rows per change batch record")
    parser.add_argument("--model", default="linear_regression")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gc", choices=("worker", "default"), default="worker",
                        help="the collector as the worker sets it (steady_gc) or CPython's")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the dead letters' announcements, if any
    model = trained(args.model)
    data = rows(args.rows, seed=1)
    batches = batch_messages(data, args.batch)
    debezium = debezium_messages(data)
    del data
    gc_mode = "default"
    if args.gc == "worker":
        try:
            from rowcast.streams.memory_policy import steady_gc
        except ImportError:
            try:  # where it lived before the learner and the sink used it too
                from rowcast.streams.scorer import steady_gc  # type: ignore[attr-defined,no-redef]
            except ImportError:  # a worker from before steady_gc
                steady_gc = None
        if steady_gc is not None:
            steady_gc()
            gc_mode = "worker"
    report: dict[str, Any] = {"rows": args.rows, "batch_rows": args.batch, "model": args.model,
                              "gc": gc_mode, "unit": "us_cpu_per_row"}
    if batches is not None:
        try:
            # faust hands the agent up to score_batch_size records: here one batch record each
            report["rowcast"] = measure("rowcast", batches, model, args.rows, 1, args.repeat)
        except AssertionError as exc:
            report["rowcast"] = f"not scored: {exc}"
    report["debezium"] = measure("debezium", debezium, model, args.rows, args.batch, args.repeat)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
