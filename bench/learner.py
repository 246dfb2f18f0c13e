"""Learner benchmark: how fast each catalog model learns, and what a checkpoint costs.

    python -m bench.learner [--rows 20000] [--models linear_regression,arf_regressor]

No services needed: it measures the parts the learner's loop spends its time on, per model, on
the same synthetic labelled rows (three numbers and a category):

- ``learn_rows_per_s``: label events applied (:class:`rowcast.models.learning.DeploymentLearner`:
  dedupe, progressive scoring, learning), one event at a time as the learner does;
- ``snapshot_kb``, ``dump_ms``, ``load_ms``: size of the signed snapshot after the run and the
  time to write (pickle + HMAC) and verify + load it, i.e. the Python side of every checkpoint
  and of a restore (the Postgres write comes on top; ``rowcast_learner_checkpoint_seconds``
  measures the whole checkpoint live);
- ``score_us``: one scoring call on the trained model, what a scorer spends per row.

The ratio ``learn_vs_linear`` compares each model with ``linear_regression`` in the same run.
"""

from __future__ import annotations

import argparse
import random
import time

import orjson

from rowcast.core.label_events import LabelEvent
from rowcast.models.catalog import CATALOG
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.learning import DeploymentLearner, MemoryPending
from rowcast.models.snapshot import dump_snapshot, load_snapshot
from rowcast.streams.learner import snapshot_payload

KEY = b"k" * 32
FEATURES = (Feature("a", "number"), Feature("b", "number"), Feature("c", "number"),
            Feature("city", "category"))


def events(d: Deployment, rows: int, task: str) -> list[LabelEvent]:
    rng = random.Random(1)
    out = []
    for i in range(rows):
        x = {"a": rng.gauss(0, 1), "b": rng.uniform(0, 10), "c": float(i % 13),
             "city": rng.choice(["Lyon", "Oslo", "Lima"])}
        value = 2 * x["a"] + 0.5 * x["b"] + rng.gauss(0, 0.3)
        y = {"regression": value, "binary": value > 2.5, "multiclass": x["city"],
             "anomaly": None}[task]
        out.append(LabelEvent("labelled", d.name, d.generation, {"id": i}, "t:0", (i, i, 1), i,
                              x, y))
    return out


def measure(model: str, rows: int) -> dict[str, float]:
    spec = CATALOG[model]
    target_kind = "category" if spec.task == "multiclass" else "number"
    d = Deployment("bench", "public", "t", "y", FEATURES, model, ("id",), target_kind)
    learner = DeploymentLearner.fresh(d, MemoryPending())
    stream = events(d, rows, spec.task)
    started = time.perf_counter()
    for e in stream:
        learner.apply([e])
    learn_s = time.perf_counter() - started
    started = time.perf_counter()
    blob = dump_snapshot(snapshot_payload(learner), KEY)
    dump_s = time.perf_counter() - started
    started = time.perf_counter()
    loaded = load_snapshot(blob, KEY)
    load_s = time.perf_counter() - started
    x = stream[-1].x or {}
    started = time.perf_counter()
    for _ in range(200):
        learner.model.score(x)
    score_s = (time.perf_counter() - started) / 200
    assert type(loaded["estimator"]) is type(learner.model.estimator)
    return {"task": spec.task, "learn_rows_per_s": round(rows / learn_s),
            "snapshot_kb": round(len(blob) / 1024, 1), "dump_ms": round(dump_s * 1000, 2),
            "load_ms": round(load_s * 1000, 2), "score_us": round(score_s * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--models", default=",".join(CATALOG))
    args = parser.parse_args()
    results = {m: measure(m, args.rows) for m in args.models.split(",")}
    base = results.get("linear_regression") or measure("linear_regression", args.rows)
    for r in results.values():
        r["learn_vs_linear"] = round(r["learn_rows_per_s"] / base["learn_rows_per_s"], 3)
    print(orjson.dumps({"rows": args.rows, "models": results}, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
