"""The learner's rules, without services: a row is learned at most once (whatever re-emits it),
a correction is counted and not learned, a label that comes before its features waits for
them, and a replayed dead letter is learned although its position is old."""

from __future__ import annotations

from typing import Any

from rowcast.core.label_events import LabelEvent
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.learning import DeploymentLearner, MemoryPending

D = Deployment("spend", "public", "c", "y", (Feature("x", "number"),), "linear_regression",
               ("id",))
ORDER = iter(range(100, 100_000))


def ev(kind: str, i: int, y: Any = None, stream: str = "t:0", order: int | None = None,
       **more: Any) -> LabelEvent:
    n = next(ORDER) if order is None else order
    x = None if kind == "label" else {"x": float(i)}
    return LabelEvent(kind, D.name, D.generation, {"id": i}, stream, (n, n, 1), n, x, y, **more)


def recording() -> tuple[DeploymentLearner, list[tuple[float, Any]]]:
    """A learner that also records what it learned, in order."""
    learner = DeploymentLearner.fresh(D, MemoryPending())
    seen: list[tuple[float, Any]] = []
    learn = learner.model.score_then_learn  # what the learner calls per row it learns

    def spy(x: dict, y: Any) -> Any:
        seen.append((x["x"], y))
        return learn(x, y)

    learner.model.score_then_learn = spy  # type: ignore[method-assign]
    return learner, seen


def test_a_row_re_emitted_by_backfill_or_repair_is_not_learned_again_by_a_later_update() -> None:
    learner, seen = recording()
    assert learner.apply([ev("labelled", 1, 2.0)]) == 1
    # backfill / reconcile --repair re-emit the row (op r: scored, no label), then an UPDATE
    assert learner.apply([ev("scored", 1, stream="t:0:r"), ev("label", 1, 2.0)]) == 0
    assert seen == [(1.0, 2.0)]
    assert learner.state.counters["duplicates"] == 2
    assert learner.pending.entries == {}  # the re-emitted row's features are not kept


def test_a_different_label_for_a_learned_row_is_a_correction_counted_not_learned() -> None:
    learner, seen = recording()
    learner.apply([ev("scored", 1), ev("label", 1, 2.0)])
    assert learner.apply([ev("label", 1, 5.0)]) == 0
    assert seen == [(1.0, 2.0)]
    assert learner.state.counters["corrections"] == 1
    # one outcome per event: a correction is not also a label waiting for its features
    # (``unmatched``, which dashboards read as labels held until their row comes)
    assert learner.state.counters["unmatched"] == 0


def test_a_primary_key_change_of_a_learned_row_is_not_learned_again() -> None:
    learner, seen = recording()
    learner.apply([ev("labelled", 1, 2.0)])
    # UPDATE ... SET id = 101: Debezium's delete + create; the create names the old key
    assert learner.apply([ev("labelled", 101, 2.0, was={"id": 1})]) == 0
    # and a later UPDATE of the row under its new key is no second label either
    assert learner.apply([ev("label", 101, 2.0)]) == 0
    assert seen == [(1.0, 2.0)]
    # a key change of a row never learned is learned (once)
    assert learner.apply([ev("labelled", 202, 4.0, was={"id": 2})]) == 1


def test_a_replayed_dead_letter_is_learned_once_despite_its_old_position() -> None:
    learner, seen = recording()
    learner.apply([ev("labelled", 1, 2.0, order=500), ev("labelled", 3, 6.0, order=600)])
    replayed = ev("labelled", 2, 4.0, order=400)  # refused at first, replayed after a fix
    assert learner.apply([replayed]) == 1
    assert learner.apply([replayed]) == 0  # replayed twice: once
    assert [y for _, y in seen] == [2.0, 6.0, 4.0]


def test_a_label_before_its_features_waits_and_is_learned_where_the_features_come() -> None:
    learner, seen = recording()
    assert learner.apply([ev("label", 1, 10.0), ev("label", 2, 20.0)]) == 0
    assert learner.state.counters["unmatched"] == 2
    assert learner.apply([ev("scored", 2), ev("labelled", 3, 30.0), ev("scored", 1)]) == 3
    assert seen == [(2.0, 20.0), (3.0, 30.0), (1.0, 10.0)]
    assert learner.state.counters["late_joined"] == 2 and learner.pending.held == {}
    assert learner.apply([ev("scored", 1)]) == 0  # learned: a re-emitted row is not


def test_the_key_change_marker_survives_the_record_encoding_and_old_records_decode() -> None:
    e = ev("labelled", 101, 2.0, was={"id": 1})
    assert LabelEvent.from_json(e.to_json()) == e
    old = ev("labelled", 5, 1.0)
    assert b"was" not in old.to_json() and LabelEvent.from_json(old.to_json()).was is None
