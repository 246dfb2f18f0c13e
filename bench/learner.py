"""Learner benchmark: what each catalog model costs the learner per label, and what its
snapshots cost the scorers.

    python -m bench.learner [--rows 20000] [--models linear_regression,arf_regressor]

No services needed: it measures the learner's own loop on the same synthetic labelled rows
(three numbers and a category, each with the score its row was served), per model; the linear
models again with the three numbers only (``..., numbers only``: their pipeline has no one-hot
branch, ``rowcast.models.catalog.without_categories``):

- ``us_per_label``: a label batch record (500 events, as scorers send them) decoded
  (:func:`rowcast.streams.learner.read_label_record`) and applied
  (:class:`rowcast.models.learning.DeploymentLearner`: commit-order merge, once-only rule,
  progressive and served metrics, learning), per label; ``labels_per_s`` is its inverse;
- ``river_us``: river's own ``predict_one`` (``predict_proba_one`` for classifiers,
  ``score_one`` for anomaly) + ``learn_one`` on the same rows, and ``overhead_us`` the
  difference: what rowcast adds (target: <= 10 us for linear models, issue 15). Where
  ``fused_step`` is true the learner does river's arithmetic itself
  (:mod:`rowcast.models.fused_learning`, bit for bit), so it can cost less than river's
  calls and ``overhead_us`` be negative;
- ``snapshot_bytes``, ``dump_s``, ``load_s``: the signed snapshot after the run, the time to
  write it (pickle + HMAC, each checkpoint) and to verify + load it (each worker, each published
  version); ``publish_interval_s``: how often the learner publishes a version of it
  (:mod:`rowcast.models.cadence`) and ``worker_cpu_share`` = load_s / that interval.

- ``commit_order_merge``: what the commit-order merge (:mod:`rowcast.models.ordering`) costs
  per event while one big transaction arrives over 4 and 16 partitions at uneven paces (so
  thousands stay buffered until the slowest partition catches up), beside the least it could
  cost, one offline sort of the same events (``vs_one_sort``); ``peak_buffered`` events.

The pending store is in memory here (``MemoryPending``): Postgres reads and the checkpoint's
writes come on top live (``rowcast_learner_checkpoint_seconds``). Timings are the best of
``--repeat`` runs in CPU time (process_time), river's and rowcast's interleaved, so a busy
machine skews both alike.
"""

from __future__ import annotations

import argparse
import random
import time

import orjson

from rowcast.core.label_events import BATCH_HEADER, LabelEvent, Served, encode_batch
from rowcast.core.settings import Settings
from rowcast.models.cadence import publish_interval
from rowcast.models.catalog import CATALOG
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.fused_learning import score_then_learn
from rowcast.models.learning import DeploymentLearner, MemoryPending
from rowcast.models.ordering import CommitOrderMerge
from rowcast.models.scoring import OnlineModel
from rowcast.models.snapshot import dump_snapshot, load_snapshot
from rowcast.streams.learner import read_label_record, snapshot_payload

KEY = b"k" * 32
BATCH = 500
FEATURES = (Feature("a", "number"), Feature("b", "number"), Feature("c", "number"),
            Feature("city", "category"))
CITIES = ["Lyon", "Oslo", "Lima"]


def events(d: Deployment, rows: int, task: str) -> list[LabelEvent]:
    rng = random.Random(1)
    out = []
    for i in range(rows):
        x = {"a": rng.gauss(0, 1), "b": rng.uniform(0, 10), "c": float(i % 13),
             "city": rng.choice(CITIES)}
        value = 2 * x["a"] + 0.5 * x["b"] + rng.gauss(0, 0.3)
        y = {"regression": value, "binary": value > 2.5, "multiclass": x["city"],
             "anomaly": None}[task]
        served = {"regression": Served(1, value + 0.1),
                  "binary": Served(1, True, ((False, 0.4), (True, 0.6))),
                  "multiclass": Served(1, "Lyon", tuple((c, 1 / 3) for c in CITIES)),
                  "anomaly": Served(1, None)}[task]
        if len(d.features) < len(FEATURES):  # numbers only: the row has no category
            del x["city"]
        out.append(LabelEvent("labelled", d.name, d.generation, {"id": i}, "t:0", (i + 1, i + 1, 1),
                              i, x, y, served))
    return out


def river_only(d: Deployment, stream: list[LabelEvent], task: str) -> float:
    estimator = OnlineModel.fresh(d).estimator
    started = time.process_time()
    if task == "regression":
        for e in stream:
            estimator.predict_one(e.x)
            estimator.learn_one(e.x, e.y)
    elif task == "anomaly":
        for e in stream:
            estimator.score_one(e.x)
            estimator.learn_one(e.x)
    else:
        for e in stream:
            estimator.predict_proba_one(e.x)
            estimator.learn_one(e.x, e.y)
    return time.process_time() - started


def through_learner(d: Deployment, records: list[bytes]) -> tuple[float, DeploymentLearner]:
    learner = DeploymentLearner.fresh(d, MemoryPending())
    headers = [(BATCH_HEADER, b"1")]
    started = time.process_time()
    for value in records:
        learner.apply(read_label_record(headers, value))
    return time.process_time() - started, learner


def measure(model: str, rows: int, repeat: int, floor_s: float,
            numbers_only: bool = False) -> dict[str, float | str]:
    spec = CATALOG[model]
    target_kind = "category" if spec.task == "multiclass" else "number"
    features = FEATURES[:3] if numbers_only else FEATURES
    d = Deployment("bench", "public", "t", "y", features, model, ("id",), target_kind)
    stream = events(d, rows, spec.task)
    records = [encode_batch(stream[i:i + BATCH]) for i in range(0, rows, BATCH)]
    total_s, river_s = float("inf"), float("inf")
    for _ in range(repeat):
        took, learner = through_learner(d, records)
        total_s = min(total_s, took)
        river_s = min(river_s, river_only(d, stream, spec.task))
        if took > 5.0:  # slow models: one run says enough
            break
    assert learner.model.samples_learned == rows
    started = time.process_time()
    blob = dump_snapshot(snapshot_payload(learner), KEY)
    dump_s = time.process_time() - started
    load_s = float("inf")
    for _ in range(3 if len(blob) < 1_000_000 else 1):
        started = time.process_time()
        loaded = load_snapshot(blob, KEY)
        load_s = min(load_s, time.process_time() - started)
    assert type(loaded["estimator"]) is type(learner.model.estimator)
    interval = publish_interval(load_s, floor_s=floor_s)
    total_us, river_us = total_s / rows * 1e6, river_s / rows * 1e6
    return {"task": spec.task, "fused_step": score_then_learn(OnlineModel.fresh(d).estimator)
            is not None, "us_per_label": round(total_us, 2),
            "river_us": round(river_us, 2), "overhead_us": round(total_us - river_us, 2),
            "labels_per_s": round(rows / total_s), "snapshot_bytes": len(blob),
            "dump_s": round(dump_s, 5), "load_s": round(load_s, 5),
            "publish_interval_s": round(interval, 2),
            "worker_cpu_share": round(load_s / interval, 5)}


def merge_cost(streams: int, rows: int, repeat: int, seed: int = 1) -> dict:
    """The merge's CPU per event on one transaction of ``rows`` changes spread over
    ``streams`` partitions, delivered in chunks of 50-400 from a partition picked at random,
    a release after each chunk (as the learner polls), the watermark at the end."""
    rng = random.Random(seed)
    commit = 10_000_000
    per: dict[int, list[LabelEvent]] = {s: [] for s in range(streams)}
    for i in range(rows):
        s = rng.randrange(streams)
        per[s].append(LabelEvent("labelled", "bench", "g", {"id": i}, f"t:{s}",
                                 (commit, commit + i + 1, i + 1), 0, {"x": 1.0}, 1.0))
    chunks, pos = [], dict.fromkeys(per, 0)
    while any(pos[s] < len(per[s]) for s in per):
        s = rng.choice([s for s in per if pos[s] < len(per[s])])
        k = rng.randint(50, 400)
        chunks.append(per[s][pos[s]:pos[s] + k])
        pos[s] += k
    best, sort_best, peak = float("inf"), float("inf"), 0
    for _ in range(repeat):
        merge = CommitOrderMerge([f"t:{s}" for s in per])
        started, got = time.process_time(), 0
        for chunk in chunks:
            merge.add_many(chunk, now=0.0)
            peak = max(peak, len(merge))
            got += len(merge.release(now=0.0))
        for s in per:
            merge.watermark(f"t:{s}", commit)
        got += len(merge.release(now=0.0))
        best = min(best, time.process_time() - started)
        assert got == rows, f"the merge released {got} of {rows}"
        started = time.process_time()
        sorted((e.order, n, e) for n, e in enumerate(e for chunk in chunks for e in chunk))
        sort_best = min(sort_best, time.process_time() - started)
    return {"us_per_event": round(best / rows * 1e6, 3),
            "one_sort_us_per_event": round(sort_best / rows * 1e6, 3),
            "vs_one_sort": round(best / sort_best, 2), "peak_buffered": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", default=",".join(CATALOG))
    args = parser.parse_args()
    floor_s = Settings().learner_checkpoint_s
    results = {m: measure(m, args.rows, args.repeat, floor_s) for m in args.models.split(",")}
    for m in ("linear_regression", "logistic_regression"):  # no one-hot branch in the pipeline
        if m in results:
            results[f"{m}, numbers only"] = measure(m, args.rows, args.repeat, floor_s, True)
    base = results.get("linear_regression") or measure("linear_regression", args.rows,
                                                       args.repeat, floor_s)
    for r in results.values():
        r["learn_vs_linear"] = round(r["labels_per_s"] / base["labels_per_s"], 3)
    merge = {f"{n} streams": merge_cost(n, max(args.rows, 100_000), args.repeat) for n in (4, 16)}
    print(orjson.dumps({"rows": args.rows, "batch": BATCH, "publish_floor_s": floor_s,
                        "models": results, "commit_order_merge": merge},
                       option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
