"""The scorer reads change batches (issue 15) beside per-row Debezium envelopes.

A batch record gives exactly what its rows as per-row envelopes give (predictions, label events
in the same order); a record that does not decode is dead-lettered whole; a bad row inside a
batch is dead-lettered alone, as a per-row envelope ``rowcast dlq replay`` can send back, and
the rest of its batch is scored.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson

from rowcast.core.change_batch import BATCH_HEADER, BATCH_KEY, ChangeBatch
from rowcast.core.envelope import (
    WATERMARK_HEADER,
    WATERMARK_KEY,
    SourceInfo,
    build_value,
    parse_event,
)
from rowcast.core.keys import encode_key
from rowcast.core.prediction import PredictionRecord, PredictionTombstone
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.serving import ServingSet
from rowcast.ops.dlq import Letter
from rowcast.streams.scorer import BatchScorer
from tests.helpers.scorer_doubles import Msg, Published

TOPIC = "t.public.t"
FRAGILE = "tests.helpers.fragile_models:make"
COMMIT_US = 1_700_000_000_000_000


def deployment(name: str = "good", model: str = "linear_regression") -> Deployment:
    features = (Feature("x", "number"),) if model == FRAGILE else (
        Feature("x", "number"), Feature("c", "category"))  # the fragile model scales nothing
    return Deployment(name, "public", "t", "y", features, model, ("id",))


def change(i: int, op: str = "c", x: object = None, y: object = None) -> dict:
    """Row i's change: (op, before, after, positions)."""
    after = None if op == "d" else {"id": i, "x": float(i) if x is None else x,
                                    "c": ["a", "b"][i % 2], "y": y}
    before = {"id": i, "x": 0.0, "c": "a", "y": None} if op in ("u", "d") else None
    return {"op": op, "before": before, "after": after, "lsn": 1000 + 10 * i,
            "commit_lsn": 1005 + 10 * i, "tx_order": 1 + i % 3, "xid": 50 + i,
            "commit_us": COMMIT_US + i}


def batch_msg(offset: int, changes: list[dict], partition: int = 0) -> Msg:
    batch = ChangeBatch("t", "db", "public", "t", ("id", "x", "c", "y"), ("id",))
    for c in changes:
        batch.add(c["op"], c["before"], c["after"], lsn=c["lsn"], commit_lsn=c["commit_lsn"],
                  tx_order=c["tx_order"], xid=c["xid"], commit_us=c["commit_us"])
    return Msg(TOPIC, partition, offset, BATCH_KEY, batch.encode(now_us=1),
               [(BATCH_HEADER, b"1")])


def envelope_msg(offset: int, c: dict, partition: int = 0) -> Msg:
    source = SourceInfo("t", "db", "public", "t", c["lsn"], c["xid"], c["commit_us"],
                        commit_lsn=c["commit_lsn"])
    value = build_value(op=c["op"], before=c["before"], after=c["after"], source=source,
                        tx_order=c["tx_order"], now_us=1)
    row = c["after"] or c["before"]
    return Msg(TOPIC, partition, offset, encode_key({"id": row["id"]}), orjson.dumps(value))


def watermark_msg(offset: int, lsn: int, partition: int = 0) -> Msg:
    return Msg(TOPIC, partition, offset, WATERMARK_KEY, None, [(WATERMARK_HEADER, str(lsn).encode())])


def score(scorer: BatchScorer, published: Published, messages: list[Msg]):
    asyncio.run(scorer.score(messages))
    return published.calls[-1]


def comparable(predictions: list) -> list:
    """Predictions without the moment they were scored at."""
    return [replace(p, scored_at_us=0) if isinstance(p, PredictionRecord) else p
            for p in predictions]


def test_a_batch_gives_what_its_rows_as_envelopes_give_in_the_same_order():
    rows = [change(1, y=2.0), change(2), change(3, op="u", y=5.0), change(4, op="d"),
            change(5, y=1.0)]
    as_batch, as_rows = Published(), Published()
    serving = ServingSet.fresh([deployment()])
    p1, d1, l1 = score(BatchScorer(serving, as_batch), as_batch,
                       [batch_msg(0, rows), watermark_msg(1, 2000)])
    p2, d2, l2 = score(BatchScorer(serving, as_rows), as_rows,
                       [envelope_msg(i, c) for i, c in enumerate(rows)] + [watermark_msg(5, 2000)])
    assert d1 == d2 == []
    assert comparable(p1) == comparable(p2)
    assert [type(p) for p in p1] == [PredictionRecord, PredictionRecord, PredictionTombstone,
                                     PredictionRecord]
    assert [replace(e, at_us=0) if e.kind == "watermark" else e for e in l1] == [
        replace(e, at_us=0) if e.kind == "watermark" else e for e in l2]
    assert [(e.kind, e.key.get("id")) for e in l1] == [
        ("labelled", 1), ("scored", 2), ("label", 3), ("deleted", 4), ("labelled", 5),
        ("watermark", None)]
    assert {e.stream for e in l1} == {f"{TOPIC}:0"}


def test_a_record_that_is_not_a_batch_goes_to_the_dead_letters_whole():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment()]), published)
    garbage = Msg(TOPIC, 0, 1, BATCH_KEY, b'{"v": 1, "op": "cc"}', [(BATCH_HEADER, b"1")])
    empty = Msg(TOPIC, 0, 2, BATCH_KEY, None, [(BATCH_HEADER, b"1")])
    predictions, dead, _ = score(scorer, published, [batch_msg(0, [change(1)]), garbage, empty,
                                                     batch_msg(3, [change(2)])])
    assert [p.key["id"] for p in predictions] == [1, 2]
    assert [(d.reason, d.offset, d.value) for d in dead] == [
        ("bad_envelope", 1, garbage.value), ("bad_envelope", 2, None)]
    assert "not a change batch" in dead[0].error


def test_a_bad_row_inside_a_batch_is_dead_lettered_alone_and_can_be_replayed():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment()]), published)
    rows = [change(1, y=1.0), change(2, x="old", y=2.0), change(3, y=3.0)]
    predictions, dead, labels = score(scorer, published, [batch_msg(7, rows, partition=2)])
    assert [p.key["id"] for p in predictions] == [1, 3]
    assert [(e.kind, e.key["id"]) for e in labels] == [("labelled", 1), ("labelled", 3)]
    [letter] = dead
    assert (letter.reason, letter.topic, letter.partition, letter.offset) == (
        "bad_feature", TOPIC, 2, 7)
    assert letter.error.startswith("good: column 'x' value 'old'")
    assert letter.key == encode_key({"id": 2}) and letter.context == {"batch_row": 1, "deployment": "good"}
    assert Letter(0, letter).replayable
    # the letter's value is the row's own per-row envelope: the event the batch row was
    replayed = parse_event(letter.key, letter.value, origin=f"{TOPIC}:2")
    original = ChangeBatch.decode(batch_msg(7, rows).value).events(origin=f"{TOPIC}:2")[1]
    assert (replayed.op, replayed.after, replayed.key, replayed.order, replayed.source.lsn,
            replayed.source.commit_us, replayed.source.tx_id) == (
        original.op, original.after, original.key, original.order, original.source.lsn,
        original.source.commit_us, original.source.tx_id)
    # replayed once the cause is fixed (here: the model now takes the row as sent)
    fixed = Msg(letter.topic, letter.partition, 99, letter.key,
                letter.value.replace(b'"x":"old"', b'"x":4.5'))
    predictions, dead, labels = score(scorer, published, [fixed])
    assert dead == [] and [p.key["id"] for p in predictions] == [2]
    assert labels[0].order == original.order and labels[0].y == 2.0


def test_a_model_raising_on_one_row_of_a_batch_costs_that_row_for_that_deployment_only():
    published = Published()
    serving = ServingSet.fresh([deployment("good"), deployment("fragile", FRAGILE)])
    rows = [change(1), change(13), change(3)]  # x == 13.0: the fragile model raises
    predictions, dead, labels = score(BatchScorer(serving, published), published,
                                      [batch_msg(0, rows)])
    assert sorted((p.deployment, p.key["id"]) for p in predictions) == [
        ("fragile", 1), ("fragile", 3), ("good", 1), ("good", 3), ("good", 13)]
    [letter] = dead
    assert letter.reason == "score_failed" and letter.key == encode_key({"id": 13})
    assert letter.error.startswith("fragile: ValueError: fragile model cannot score")
    assert sorted((e.deployment, e.key["id"]) for e in labels) == [
        ("fragile", 1), ("fragile", 3), ("good", 1), ("good", 3), ("good", 13)]


def test_batches_envelopes_and_watermarks_mix_in_one_call_in_partition_order():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment()]), published)
    messages = [batch_msg(0, [change(1), change(2)], partition=0),
                envelope_msg(0, change(3), partition=1),
                watermark_msg(1, 1020, partition=0),
                batch_msg(2, [change(4)], partition=0),
                watermark_msg(1, 1040, partition=1)]
    predictions, dead, labels = score(scorer, published, messages)
    assert dead == [] and [p.key["id"] for p in predictions] == [1, 2, 3, 4]
    assert [(e.kind, e.stream, e.order[0]) for e in labels] == [
        ("scored", f"{TOPIC}:0", 1015), ("scored", f"{TOPIC}:0", 1025),
        ("scored", f"{TOPIC}:1", 1035), ("scored", f"{TOPIC}:0", 1045),
        ("watermark", f"{TOPIC}:0", 1020), ("watermark", f"{TOPIC}:1", 1040)]
