"""Drift detection, challengers and the promotion test, on the learner's ordered stream (pure)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from river.datasets import synth

from rowcast.core.errors import ConfigError
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.operations import Challenger, ModelOperations, paired_test, row_loss
from rowcast.models.scoring import OnlineModel, Score

D = Deployment("spend", "public", "t", "y", (Feature("x", "number"),), "linear_regression", ("id",))


def champion_and_ops(detector: str = "adwin") -> tuple[OnlineModel, ModelOperations]:
    return OnlineModel.fresh(D), ModelOperations("regression", detector=detector)


def test_a_concept_drift_is_detected_near_the_drift_point():
    """river's own drift generator: one concept for 2,000 rows, then another."""
    stream = synth.ConceptDriftStream(stream=synth.Agrawal(classification_function=0, seed=1),
                                      drift_stream=synth.Agrawal(classification_function=4,
                                                                 seed=1),
                                      position=2000, width=50, seed=1)
    d = Deployment("c", "public", "t", "y", (Feature("salary", "number"),
                                             Feature("age", "number"),
                                             Feature("commission", "number")),
                   "hoeffding_tree_classifier", ("id",), target_kind="category")
    model = OnlineModel.fresh(d)
    ops = ModelOperations(model.spec.task)
    found = []
    for x, y in stream.take(4000):
        x = {k: float(x[k]) for k in ("salary", "age", "commission")}
        event = ops.observe(row_loss(model.spec.task, y, model.score(x)))
        model.learn(x, y)
        if event is not None:
            found.append(event)
    after = [e.at_label for e in found if e.at_label >= 2000]
    assert after and after[0] < 2600, [e.at_label for e in found]
    assert found[-1].detail["detector"] == "adwin"


@pytest.mark.parametrize("detector", ["page_hinkley", "kswin"])
def test_the_other_detectors_see_a_jump_in_loss(detector):
    ops = ModelOperations("regression", detector=detector)
    rng = random.Random(3)
    events = [ops.observe(abs(rng.gauss(0, 0.1)) + (5.0 if i >= 1000 else 0.0))
              for i in range(1500)]
    hits = [e.at_label for e in events if e is not None]
    assert any(1000 < at < 1200 for at in hits), hits


def test_no_detector_no_events_and_unknown_choices_are_refused():
    ops = ModelOperations("regression", detector="none")
    assert all(ops.observe(float(i % 7)) is None for i in range(2000))
    with pytest.raises(ConfigError, match="unknown drift detector"):
        ModelOperations("regression", detector="cusum")
    with pytest.raises(ConfigError, match="unknown drift reaction"):
        ModelOperations("regression", reaction="panic")


def test_row_loss_is_absolute_error_or_zero_one():
    assert row_loss("regression", 2.0, Score(-1.0, -1.0)) == 3.0
    assert row_loss("multiclass", "a", Score("a", 0.9)) == 0.0
    assert row_loss("binary", False, Score(None, None)) is None


def test_a_better_challenger_wins_the_paired_test_and_a_worse_one_does_not():
    """Same rows, same order: the champion is a constant-mean model, the challenger the linear
    model that fits y = 3x."""
    rng = random.Random(1)
    champion = OnlineModel.fresh(dataclasses.replace(D, model="linear_regression"))
    good = Challenger("good", OnlineModel.fresh(D), auto_promote=True)
    worse = Challenger("worse", OnlineModel.fresh(D), auto_promote=True)
    ops = ModelOperations("regression")
    ops.add(good)
    ops.add(worse)
    for _ in range(1500):
        x = {"x": rng.uniform(-1, 1)}
        y = 3 * x["x"]
        scored = champion.score(x)
        loss = row_loss("regression", y, scored)
        ops.observe(loss)
        good.observe(x, y, loss)
        worse.observe({"x": 0.0}, y, loss)  # it never sees the feature
        champion.learn({"x": 0.0}, y)  # the champion is blind too: equal to `worse`
    evidence = good.evidence()
    assert evidence.wins and evidence.n == 1000 and evidence.z > 2.576
    assert not worse.evidence().wins
    best = ops.ready_to_promote()
    assert best is not None and best[0].name == "good"
    compare = ops.compare()
    assert compare["good"]["labels"] == 1500
    assert compare["good"]["progressive"]["MAE"] < compare["worse"]["progressive"]["MAE"]


def test_the_paired_test_needs_enough_rows_and_a_margin():
    assert not paired_test([(1.0, 0.5)] * 499).wins
    assert paired_test([(1.0, 0.5), (1.1, 0.5)] * 250).wins
    assert not paired_test([(1.0, 0.995), (1.0, 0.99)] * 500).wins  # below the 2 % margin
