"""Issue 14: workers forward the source's watermarks into the labels stream.

A change-topic record carrying the watermark header is never scored, dead-lettered or turned
into a prediction; every deployment reading that topic (as its table or its labels table) gets
a ``watermark`` label event for that partition, after every label event of the batch, so it
follows every label event of that partition that came before it.
"""

from __future__ import annotations

import asyncio

import orjson

from rowcast.core.envelope import WATERMARK_HEADER, WATERMARK_KEY, SourceInfo, build_value
from rowcast.core.label_events import LabelEvent
from rowcast.models.deployment import Deployment, Feature, LabelSource
from rowcast.models.learning import DeploymentLearner, MemoryPending
from rowcast.models.serving import ServingSet
from rowcast.streams.scorer import BatchScorer
from tests.helpers.scorer_doubles import Msg, Published

TOPIC = "t.public.t"




def deployment(name: str, table: str = "t", labels: LabelSource | None = None) -> Deployment:
    return Deployment(name, "public", table, "y", (Feature("x", "number"),), "linear_regression",
                      ("id",), labels=labels)


def change(partition: int, offset: int, i: int, commit: int) -> Msg:
    source = SourceInfo("t", "db", "public", "t", commit - 1, 1, 10 * i, commit_lsn=commit)
    value = build_value(op="c", before=None, after={"id": i, "x": float(i), "y": 2.0 * i},
                        source=source, tx_order=1, now_us=10 * i)
    return Msg(TOPIC, partition, offset, orjson.dumps({"id": i}), orjson.dumps(value))


def watermark(partition: int, offset: int, lsn: int, topic: str = TOPIC) -> Msg:
    return Msg(topic, partition, offset, WATERMARK_KEY, None,
               [(WATERMARK_HEADER, str(lsn).encode())])


def test_a_watermark_record_becomes_a_label_event_per_deployment_after_the_batch_labels():
    published = Published()
    on_t = [deployment("a"), deployment("b")]
    joined = deployment("c", table="other", labels=LabelSource("public", "t", "ref", "y"))
    elsewhere = deployment("d", table="other")
    scorer = BatchScorer(ServingSet.fresh([*on_t, joined, elsewhere]), published,
                         topic_of=lambda schema, table: f"t.{schema}.{table}")
    asyncio.run(scorer.score([change(0, 0, 1, 100), watermark(1, 0, 150), change(1, 1, 2, 200),
                              watermark(0, 1, 250)]))
    [(predictions, dead, labels)] = published.calls
    assert dead == []  # a watermark record is no bad envelope
    assert sorted((p.deployment, p.key["id"]) for p in predictions) == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)]  # nothing scored for the watermark records
    kinds = [e.kind for e in labels]
    assert kinds == ["labelled"] * 4 + ["watermark"] * 6  # watermarks after every label event
    marks = {(e.deployment, e.stream, e.order) for e in labels if e.kind == "watermark"}
    assert marks == {(name, f"{TOPIC}:{p}", (lsn, 0, 0))
                     for name in ("a", "b", "c") for p, lsn in ((1, 150), (0, 250))}
    gens = {d.name: d.generation for d in (*on_t, joined)}
    for e in labels[4:]:
        assert (e.generation, e.key) == (gens[e.deployment], {})
        assert LabelEvent.from_json(e.to_json()) == e  # the labels topic carries it


def test_two_tables_sharing_one_topic_each_get_its_watermarks():
    # "a b" and "a_b" both become the topic t.public.a_b: a learner whose table is not told of
    # the topic's progress holds its last labels until its own table changes again
    published = Published()
    spaced, underscored = deployment("spaced", table="a b"), deployment("underscored", table="a_b")
    scorer = BatchScorer(ServingSet.fresh([spaced, underscored]), published,
                         topic_of=lambda schema, table: f"t.{schema}.{table.replace(' ', '_')}")
    asyncio.run(scorer.score([watermark(0, 3, 500, topic="t.public.a_b")]))
    [(_, _, labels)] = published.calls
    assert sorted((e.deployment, e.stream, e.order) for e in labels) == [
        ("spaced", "t.public.a_b:0", (500, 0, 0)),
        ("underscored", "t.public.a_b:0", (500, 0, 0))]


def test_a_batch_of_watermarks_only_publishes_no_prediction_and_keeps_partition_order():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment("a")]), published,
                         topic_of=lambda schema, table: f"t.{schema}.{table}")
    asyncio.run(scorer.score([watermark(2, 5, 300), watermark(2, 6, 400),
                              watermark(0, 9, 999, topic="t.public.unserved")]))
    [(predictions, dead, labels)] = published.calls
    assert (predictions, dead) == ([], [])
    assert [(e.stream, e.order[0]) for e in labels] == [(f"{TOPIC}:2", 300), (f"{TOPIC}:2", 400)]


def test_without_topic_names_the_scorer_matches_the_topic_by_schema_and_table():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment("a")]), published)
    asyncio.run(scorer.score([watermark(3, 0, 77)]))
    assert [(e.kind, e.stream, e.order) for e in published.calls[0][2]] == [
        ("watermark", f"{TOPIC}:3", (77, 0, 0))]


def test_the_serving_set_names_each_deployment_on_the_table_once():
    same = deployment("self", labels=LabelSource("public", "t", "ref", "y"))
    serving = ServingSet.fresh([same, deployment("a")])
    marks = serving.watermarks(("public", "t"), f"{TOPIC}:0", 42, now_us=7)
    assert sorted((e.deployment, e.order, e.at_us) for e in marks) == [
        ("a", (42, 0, 0), 7), ("self", (42, 0, 0), 7)]
    assert serving.watermarks(("public", "nothing"), "x:0", 42) == []


def test_the_learner_ignores_watermark_events_for_now():
    d = deployment("a")
    learner = DeploymentLearner.fresh(d, MemoryPending())
    before = dict(learner.state.counters)
    mark = LabelEvent("watermark", "a", d.generation, {}, f"{TOPIC}:0", (42, 0, 0), 1)
    assert learner.apply([mark]) == 0
    assert learner.state.counters == before
    assert learner.state.high_water == {}
