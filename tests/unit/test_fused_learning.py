"""The fused score-then-learn step is bit for bit river's, or is not used at all."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from river import linear_model, optim, preprocessing

from rowcast.models import fused_learning
from rowcast.models.catalog import get_model
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.fused_learning import score_then_learn
from rowcast.models.scoring import OnlineModel


def pipeline(**kwargs) -> object:
    return preprocessing.StandardScaler() | linear_model.LinearRegression(**kwargs)


def state(model) -> list:
    scaler, lin = model.steps.values()
    return [list((k, repr(v)) for k, v in d.items())
            for d in (scaler.counts, scaler.means, scaler.vars, lin._weights.to_dict())] + [
        repr(lin.intercept), lin.optimizer.n_iterations]


def rows(seed: int, n: int):
    """Features that come late and go missing, zero variance, magnitudes from 1e-300 to 1e150."""
    rng = random.Random(seed)
    scale = 10.0 ** rng.randint(-8, 8)
    for _ in range(n):
        x = {}
        for k in ("age", "income", "Credit Score", "flat"):
            if rng.random() < 0.15:
                continue
            x[k] = 3.0 if k == "flat" else rng.choice([
                rng.gauss(0, 1) * scale, rng.uniform(-1e6, 1e6), float(rng.randint(-3, 3)),
                0.0, -0.0, rng.gauss(0, 1e-300), rng.gauss(0, 1e150)])
        yield x, rng.gauss(0, 100) * scale


@pytest.mark.parametrize("seed", range(12))
def test_predictions_and_state_equal_rivers_bit_for_bit(seed):
    ours, theirs = pipeline(), pipeline()
    step = score_then_learn(ours)
    assert step is not None
    for n, (x, y) in enumerate(rows(seed, 1500)):
        expected = theirs.predict_one(dict(x))
        theirs.learn_one(dict(x), y)
        got = step(dict(x), y)
        assert repr(got) == repr(expected), (seed, n)
        if n % 250 == 0:
            assert state(ours) == state(theirs), (seed, n)
    assert state(ours) == state(theirs)
    for a, b in zip(ours.steps.values(), theirs.steps.values(), strict=True):  # what a snapshot holds
        assert pickle.dumps(a) == pickle.dumps(b)  # (the pipeline's own call plans differ)


def test_hyperparameters_of_the_recognised_shape_are_followed():
    ours = pipeline(optimizer=optim.SGD(0.05), intercept_lr=0.2, clip_gradient=3.0)
    theirs = pipeline(optimizer=optim.SGD(0.05), intercept_lr=0.2, clip_gradient=3.0)
    step = score_then_learn(ours)
    for x, y in rows(99, 500):
        expected = theirs.predict_one(dict(x))
        theirs.learn_one(dict(x), y)
        assert repr(step(dict(x), y)) == repr(expected)
    assert state(ours) == state(theirs)


class MyRegression(linear_model.LinearRegression):
    pass


@pytest.mark.parametrize("estimator", [
    linear_model.LinearRegression(),
    pipeline(l2=0.01),
    pipeline(optimizer=optim.Adam()),
    pipeline(loss=optim.losses.Huber()),
    pipeline(optimizer=optim.SGD(optim.schedulers.InverseScaling(0.01))),
    preprocessing.StandardScaler(with_std=False) | linear_model.LinearRegression(),
    preprocessing.StandardScaler() | MyRegression(),
    preprocessing.MinMaxScaler() | linear_model.LinearRegression(),
    get_model("linear_regression").build(categories=True),  # the one-hot branch
    get_model("logistic_regression").build(categories=False),
], ids=lambda e: repr(e).split("\n")[0][:40])
def test_any_other_shape_is_left_to_river(estimator):
    assert score_then_learn(estimator) is None


@pytest.mark.parametrize("value", [1, None, "Lyon", True, math.inf])
def test_a_row_it_cannot_replicate_learns_nothing_and_says_so(value):
    model = pipeline()
    step = score_then_learn(model)
    step({"a": 1.0, "b": 2.0}, 1.0)
    before = state(model)
    if value is math.inf:  # a float: river's arithmetic, followed exactly
        theirs = pipeline()
        theirs.learn_one({"a": 1.0, "b": 2.0}, 1.0)
        expected = theirs.predict_one({"a": 1.0, "b": value})
        theirs.learn_one({"a": 1.0, "b": value}, 1.0)
        assert repr(step({"a": 1.0, "b": value}, 1.0)) == repr(expected)
        assert state(model) == state(theirs)
    else:
        assert step({"a": 1.0, "b": value}, 1.0) is None
        assert state(model) == before


def test_not_trusted_when_the_check_stream_disagrees(monkeypatch):
    monkeypatch.setattr(fused_learning, "_TRUSTED", [])
    monkeypatch.setattr(fused_learning, "_CHECK", (({"a": 1.0}, "not a number"),))
    assert score_then_learn(pipeline()) is None
    monkeypatch.setattr(fused_learning, "_TRUSTED", [])
    monkeypatch.undo()
    assert score_then_learn(pipeline()) is not None


def deployment(*features: Feature) -> Deployment:
    return Deployment("d", "public", "t", "y", features, "linear_regression", ("id",))


@pytest.mark.parametrize("features", [
    (Feature("a", "number"), Feature("b", "number")),
    (Feature("a", "number"), Feature("city", "category")),
], ids=["numbers only: fused", "with a category: river"])
def test_online_model_score_then_learn_equals_score_then_learn_by_river(features):
    fused, plain = OnlineModel.fresh(deployment(*features)), OnlineModel.fresh(deployment(*features))
    rng = random.Random(3)
    for n in range(400):
        x = {"a": rng.gauss(5, 2)}
        x["b" if len(x) and features[1].name == "b" else "city"] = (
            rng.uniform(0, 9) if features[1].name == "b" else rng.choice(["Lyon", "Oslo"]))
        if n == 200:  # a restored snapshot: a new estimator object, the step follows it
            blob = pickle.dumps(fused.estimator)
            fused.estimator, plain.estimator = pickle.loads(blob), pickle.loads(blob)
        y = 2 * x["a"] + rng.gauss(0, 0.1)
        expected = plain.score(x)
        plain.learn(x, y)
        assert fused.score_then_learn(x, y) == expected
    for a, b in zip(fused.estimator.steps.values(), plain.estimator.steps.values(),
                    strict=True):
        assert pickle.dumps(a) == pickle.dumps(b)
    assert fused.samples_learned == plain.samples_learned == 400
