"""A model whose predictions or state become non-finite is recognised, and a guarded replay
refuses the one row that breaks it while learning the others."""

from __future__ import annotations

import math

import pytest

from rowcast.core.label_events import LabelEvent
from rowcast.models.catalog import CATALOG
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.learning import DeploymentLearner, MemoryPending


def _deployment(model: str = "linear_regression") -> Deployment:
    kind = "category" if CATALOG[model].task == "multiclass" else "number"
    return Deployment("d", "public", "t", "y", (Feature("x", "number"),), model, ("id",), kind)


def _event(d: Deployment, i: int, x: float, y) -> LabelEvent:
    return LabelEvent("labelled", d.name, d.generation, {"id": i}, "t:0", (i, i, 1), i,
                      {"x": x}, y)


def _y(task: str, i: int):
    return {"regression": 2.0 * i, "binary": i % 2 == 0, "multiclass": "abc"[i % 3],
            "anomaly": None}[task]


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_a_model_learning_ordinary_rows_is_healthy(model):
    d = _deployment(model)
    learner = DeploymentLearner.fresh(d, MemoryPending())
    assert learner.health() is None  # fresh: nothing learned yet
    learner.apply([_event(d, i, float(i % 17), _y(CATALOG[model].task, i)) for i in range(300)])
    assert learner.health() is None


def test_an_overflowing_row_makes_the_model_unhealthy_instead_of_crashing_the_learner():
    d = _deployment()
    learner = DeploymentLearner.fresh(d, MemoryPending())
    learner.apply([_event(d, i, float(i), 2.0 * i) for i in range(50)])
    # finite, but its square is not: the running RMSE overflows (raised out of apply before)
    assert learner.apply([_event(d, 50, 1e300, 5.0)]) == 0
    reason = learner.health()
    assert reason is not None and "OverflowError" in reason


def test_an_overflowed_scaler_is_found_in_the_model_state():
    d = _deployment()
    learner = DeploymentLearner.fresh(d, MemoryPending())
    learner.apply([_event(d, i, float(i), 2.0 * i) for i in range(50)])
    learner.model.learn({"x": 1e300}, 5.0)  # the scaler's running variance becomes inf
    reason = learner.health()
    assert reason is not None and "non-finite" in reason and "vars" in reason, reason


def test_a_guarded_replay_refuses_the_row_that_breaks_the_model():
    d = _deployment()
    learner = DeploymentLearner.fresh(d, MemoryPending())
    events = [_event(d, i, float(i), 2.0 * i) for i in range(20)]
    events.insert(10, _event(d, 99, 1e300, 5.0))
    learned = learner.apply(events, guarded=True)
    assert learned == 20 and learner.model.samples_learned == 20
    assert [e.key for e, _ in learner.refused] == [{"id": 99}]
    assert "OverflowError" in learner.refused[0][1]
    assert learner.state.counters["non_finite"] == 1 and learner.state.counters["learned"] == 20
    assert learner.health() is None
    assert math.isfinite(learner.model.score({"x": 3.0}).prediction)
    # the refused row is remembered: a replay of it is a duplicate, not a second break
    learner.refused.clear()
    assert learner.apply([events[10]]) == 0 and learner.state.counters["duplicates"] == 1
    assert learner.health() is None


def test_a_huge_first_label_is_refused_not_every_row_after_it():
    """1e300 as the very first row left the scaler's mean at 1e300: finite, so it was accepted
    (and checkpointed), and then every ordinary row overflowed the variance and was refused in
    its place, for good. A state number whose square overflows is as unusable as an infinite
    one: the row that put it there is the one refused."""
    d = _deployment()
    learner = DeploymentLearner.fresh(d, MemoryPending())
    learner.model.learn({"x": 1e300}, 5.0)
    reason = learner.health()  # what the checkpoint asks: never published, the learner pauses
    assert reason is not None and "square overflows" in reason, reason

    learner = DeploymentLearner.fresh(d, MemoryPending())  # rolled back to the fresh model
    events = [_event(d, 99, 1e300, 5.0)] + [_event(d, i, float(i), 2.0 * i) for i in range(20)]
    assert learner.apply(events, guarded=True) == 20
    assert [e.key for e, _ in learner.refused] == [{"id": 99}]
    assert learner.health() is None and learner.state.counters["non_finite"] == 1


def test_ordinary_large_values_are_not_mistaken_for_overflow():
    d = _deployment()
    learner = DeploymentLearner.fresh(d, MemoryPending())
    learner.apply([_event(d, i, float(i) * 1e60, 3e60 * i) for i in range(50)])
    assert learner.health() is None
