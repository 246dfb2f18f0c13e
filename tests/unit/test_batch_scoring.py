"""Scoring a batch at once equals river's predict_one / predict_proba_one on every row.

The plan (rowcast.models.batch_scoring) repeats river's floating-point operations in river's
order, so the answers are compared for equality within 1e-12 relative as the issue asks, and are
in fact expected bit-for-bit equal (asserted too, so a drift is seen before it matters).
"""

from __future__ import annotations

import math
import random

import pytest
from river import linear_model, optim, preprocessing

from rowcast.models.batch_scoring import linear_plan
from rowcast.models.catalog import get_model, preprocessing_stage
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.scoring import OnlineModel, Score

CITIES = ["Lyon", "Oslo", "Lima", "Rome", "Kyiv", "Lagos", "Quito"]
EDGES = [0.0, -0.0, 1e-300, -1e-300, 5e-324, 1e300, -1e300, 1.7976931348623157e308,
         1e15 + 0.3, -123456789.123456789, 1.0, 2.0]


def random_row(rng: random.Random, edges: bool) -> dict:
    x: dict = {}
    for name in ("a", "b", "c", "d"):
        roll = rng.random()
        if roll < 0.15:
            continue  # NULL: the feature is absent
        if edges and roll < 0.4:
            x[name] = rng.choice(EDGES)
        else:
            x[name] = rng.gauss(0, 1) * 10 ** rng.randint(-3, 6)
    for name in ("city", "tier", "zone"):
        if rng.random() < 0.85:
            x[name] = rng.choice(CITIES + ["never seen", "Atlantis"] if edges else CITIES)
    if rng.random() < 0.1:
        x["e"] = rng.uniform(-1, 1)  # a feature the model never learned
    return x


def same(got: float, want: float) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    if math.isinf(want):
        return got == want
    return got == want and abs(got - want) <= 1e-12 * abs(want)


# the features random_row gives: numbers and categories (a deployment without categories gets
# its pipeline without the one-hot branch, tests/unit/test_lean_pipeline.py)
FEATURES = (*(Feature(n, "number") for n in "abcde"),
            *(Feature(n, "category") for n in ("city", "tier", "zone")))


def trained(model: str, seed: int, rows: int = 400) -> OnlineModel:
    d = Deployment("m", "public", "t", "y", FEATURES, model, ("id",))
    m = OnlineModel.fresh(d)
    rng = random.Random(seed)
    for _ in range(rows):
        x = random_row(rng, edges=False)
        x.pop("e", None)
        raw = 3 * x.get("a", 0.0) / 1e4 - x.get("b", 0.0) / 1e5 + (x.get("city") == "Oslo")
        m.learn(x, raw if m.spec.task == "regression" else raw > 0.4)
    return m


@pytest.mark.parametrize("model", ["linear_regression", "logistic_regression"])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("edges", [False, True])
def test_the_batch_equals_river_row_by_row(model: str, seed: int, edges: bool) -> None:
    m = trained(model, seed)
    rng = random.Random(100 + seed)
    xs = [random_row(rng, edges) for _ in range(2000)] + [{}]
    plan = linear_plan(m.estimator)
    assert plan is not None, "the catalog's pipeline is recognised"
    answers = plan.predict_many(xs)
    assert all(a is not None for a in answers), "every row replicated, none left to river"
    for x, answer in zip(xs, answers, strict=True):
        if m.spec.task == "regression":
            assert same(answer, m.estimator.predict_one(x)), x
        else:
            want = m.estimator.predict_proba_one(x)
            assert answer.keys() == want.keys() and all(same(answer[k], want[k]) for k in want), x
    for got, x in zip(m.score_many(xs), xs, strict=True):
        want = m.score(x)
        assert isinstance(got, Score) and same(got.score, want.score), x
        assert got.prediction == want.prediction or math.isnan(want.score)


def test_an_untrained_model_and_an_empty_batch() -> None:
    m = OnlineModel.fresh(Deployment("m", "public", "t", "y", FEATURES,
                                     "linear_regression", ("id",)))
    assert linear_plan(m.estimator).predict_many([{"a": 1.0, "city": "Lyon"}, {}]) == [0.0, 0.0]
    assert m.score_many([]) == []


def test_other_models_and_subclasses_are_scored_by_river_row_by_row() -> None:
    class Mine(linear_model.LinearRegression):
        def predict_one(self, x, **kwargs):
            return 42.0

    assert linear_plan(preprocessing_stage() | Mine()) is None
    assert linear_plan(get_model("hoeffding_tree_regressor").build()) is None
    assert linear_plan(linear_model.LinearRegression()) is None
    assert linear_plan(preprocessing_stage(scaler=preprocessing.MinMaxScaler)
                       | linear_model.LinearRegression()) is None
    normal = preprocessing_stage() | linear_model.LinearRegression(
        initializer=optim.initializers.Normal(seed=1))
    assert linear_plan(normal) is None

    d = Deployment("m", "public", "t", "y", FEATURES,
                   "tests.helpers.fragile_models:make", ("id",))
    fragile = OnlineModel.fresh(d)
    scored = fragile.score_many([{"a": 1.0, "x": 1.0}, {"x": 13.0}, {"x": 2.0}])
    assert isinstance(scored[1], ValueError) and isinstance(scored[0], Score) \
        and isinstance(scored[2], Score)


def test_a_row_the_plan_cannot_replicate_is_left_to_river() -> None:
    m = trained("linear_regression", 4)
    plan = linear_plan(m.estimator)
    odd = [{"a": 1}, {"a": 1.0, "city_Lyon": 2.0, "city": "Lyon"}, {"a": True}]
    assert plan.predict_many(odd) == [None, None, None]
    assert [s.score for s in m.score_many(odd)] == [m.score(x).score for x in odd]


def test_non_finite_weights_leave_the_whole_batch_to_river() -> None:
    m = trained("linear_regression", 5)
    last = m.estimator["LinearRegression"]
    last._weights["a"] = float("inf")
    assert linear_plan(m.estimator) is None
    score = m.score_many([{"a": 1.0}, {"b": 2.0}])
    assert [s.score for s in score] == [m.score({"a": 1.0}).score, m.score({"b": 2.0}).score]
