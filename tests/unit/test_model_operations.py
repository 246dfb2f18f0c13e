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


# -- in the learner: the same ordered stream for the champion, the detector and challengers --

from rowcast.core.label_events import LabelEvent  # noqa: E402
from rowcast.models.learning import DeploymentLearner, MemoryPending  # noqa: E402


def labelled(i: int, x: float, y: float, generation: str) -> LabelEvent:
    return LabelEvent("labelled", "spend", generation, {"id": i}, "t:0", (i, i, 1), 0,
                      {"x": x}, y)


def test_challengers_learn_the_champions_rows_in_order_and_the_winner_is_promoted():
    learner = DeploymentLearner.fresh(D, MemoryPending())
    learner.configure("adwin", "none", {"tree": ("hoeffding_tree_regressor", True, True)})
    rng = random.Random(4)
    rows = [(i, rng.uniform(0, 10)) for i in range(1, 2001)]
    # y = x^2: a tree beats the linear champion clearly
    learner.apply([labelled(i, x, x * x, D.generation) for i, x in rows])
    tree = learner.operations.challengers["tree"]
    assert tree.progressive.n == learner.progressive.n == 2000
    assert len(tree.shadow) == 2000 and tree.shadow[0][0] == b'{"id":1}'
    # the reference: the same challenger model alone on the same rows in the same order
    alone = OnlineModel.fresh(dataclasses.replace(D, model="hoeffding_tree_regressor"))
    for _i, x in rows:
        alone.learn({"x": x}, x * x)
    assert tree.model.estimator.predict_one({"x": 3.0}) == alone.estimator.predict_one({"x": 3.0})

    best = learner.operations.ready_to_promote()
    assert best is not None and best[0].name == "tree"
    champion_mae = learner.progressive.values()["MAE"]
    tree_mae = tree.progressive.values()["MAE"]
    event = learner.promote("tree", "auto")
    assert event.detail["evidence"]["wins"] and event.detail["previous"] == "champion-v0"
    assert learner.champion_model == "hoeffding_tree_regressor"
    assert learner.model.estimator is tree.model.estimator
    assert learner.progressive.values()["MAE"] == tree_mae
    old = learner.operations.challengers["champion-v0"]
    assert old.progressive.values()["MAE"] == champion_mae and not old.auto_promote
    # promoting the old champion back (at a later version) is the rollback across the switch
    learner.model.version = 5
    learner.promote("champion-v0", "manual")
    assert learner.champion_model == "linear_regression"
    assert learner.model.estimator is old.model.estimator
    assert set(learner.operations.challengers) == {"champion-v5"}
    assert learner.operations.challengers["champion-v5"].model.estimator is tree.model.estimator


def test_a_drift_with_the_retrain_reaction_starts_a_fresh_challenger_from_that_point():
    learner = DeploymentLearner.fresh(D, MemoryPending())
    learner.configure("adwin", "retrain", {})
    rng = random.Random(2)
    events = []
    for i in range(1, 3001):
        x = rng.uniform(0, 1)
        y = 2 * x if i <= 1500 else 50 - 20 * x  # the concept changes at row 1500
        events.append(labelled(i, x, y, D.generation))
    learner.apply(events)
    drifts = [e for e in learner.model_events if e.kind == "drift"]
    assert drifts and 1500 <= drifts[0].at_label < 1700, [e.at_label for e in drifts]
    retrain = [n for n in learner.operations.challengers if n.startswith("retrain-")]
    assert retrain and learner.operations.challengers[retrain[0]].auto_promote
    assert learner.metrics()["drift"]["detections"] == len(drifts)
