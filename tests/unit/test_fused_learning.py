"""The fused score-then-learn step is bit for bit river's (linear and logistic regression on
numbers), or is not used at all."""

from __future__ import annotations

import math
import numbers
import pickle
import random

import pytest
from river import compose, linear_model, optim, preprocessing

from rowcast.models import fused_learning
from rowcast.models.catalog import get_model, preprocessing_stage
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


@pytest.mark.parametrize("seed", range(8))
def test_logistic_probabilities_and_state_equal_rivers_bit_for_bit(seed):
    ours = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    theirs = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    step = score_then_learn(ours)
    assert step is not None
    rng = random.Random(seed)
    for n, (x, _) in enumerate(rows(seed, 1500)):
        if n in (300, 600, 900):  # the ends of the sigmoid and of the log loss's branches
            intercept = rng.choice([45.0, -45.0, 25.0, -25.0])
            for model in (ours, theirs):
                model["LogisticRegression"].intercept = intercept
        y = rng.random() < 0.3
        expected = theirs.predict_proba_one(dict(x))
        theirs.learn_one(dict(x), y)
        assert repr(step(dict(x), y)) == repr(expected), (seed, n)
    assert state(ours) == state(theirs)


def test_hyperparameters_of_the_recognised_shape_are_followed():
    ours = pipeline(optimizer=optim.SGD(0.05), intercept_lr=0.2, clip_gradient=3.0)
    theirs = pipeline(optimizer=optim.SGD(0.05), intercept_lr=0.2, clip_gradient=3.0)
    step = score_then_learn(ours)
    for x, y in rows(99, 500):
        expected = theirs.predict_one(dict(x))
        theirs.learn_one(dict(x), y)
        assert repr(step(dict(x), y)) == repr(expected)
    assert state(ours) == state(theirs)
    weighted = optim.losses.Log(weight_pos=3.0, weight_neg=0.5)
    ours = preprocessing.StandardScaler() | linear_model.LogisticRegression(loss=weighted)
    theirs = preprocessing.StandardScaler() | linear_model.LogisticRegression(loss=weighted)
    step = score_then_learn(ours)
    for n, (x, _) in enumerate(rows(98, 500)):
        expected = theirs.predict_proba_one(dict(x))
        theirs.learn_one(dict(x), n % 4 == 0)
        assert repr(step(dict(x), n % 4 == 0)) == repr(expected)
    assert state(ours) == state(theirs)


class MyRegression(linear_model.LinearRegression):
    pass


@pytest.mark.parametrize("estimator", [
    linear_model.LinearRegression(),
    pipeline(l2=0.01),
    pipeline(optimizer=optim.Adam()),
    pipeline(optimizer=optim.SGD(math.inf)),  # lr * (0 * g) is NaN even for a 0 gradient
    pipeline(loss=optim.losses.Huber()),
    pipeline(optimizer=optim.SGD(optim.schedulers.InverseScaling(0.01))),
    preprocessing.StandardScaler(with_std=False) | linear_model.LinearRegression(),
    preprocessing.StandardScaler() | MyRegression(),
    preprocessing.MinMaxScaler() | linear_model.LinearRegression(),
    preprocessing_stage(scale=False) | linear_model.LinearRegression(),
    (compose.SelectType(numbers.Number) | preprocessing.StandardScaler()) + (
        compose.SelectType(str) | preprocessing.OneHotEncoder(drop_first=True))
    | linear_model.LinearRegression(),
    (compose.SelectType(str) | preprocessing.OneHotEncoder()) + (
        compose.SelectType(numbers.Number) | preprocessing.StandardScaler())
    | linear_model.LinearRegression(),  # the branches in the other order
    preprocessing.StandardScaler() | linear_model.LogisticRegression(loss=optim.losses.Hinge()),
    preprocessing.StandardScaler() | linear_model.PARegressor(),
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


def test_inside_rivers_learn_during_predict_it_steps_aside():
    from river import compose

    model = pipeline()
    step = score_then_learn(model)
    with compose.learn_during_predict():
        assert step({"a": 1.0}, 1.0) is None
    assert state(model) == state(pipeline())
    assert step({"a": 1.0}, 1.0) == 0.0


def test_not_trusted_when_the_check_stream_disagrees(monkeypatch):
    monkeypatch.setattr(fused_learning, "_TRUSTED", [])
    monkeypatch.setattr(fused_learning, "_CHECK", (({"a": 1.0}, "not a number"),))
    assert score_then_learn(pipeline()) is None
    monkeypatch.setattr(fused_learning, "_TRUSTED", [])
    monkeypatch.undo()
    assert score_then_learn(pipeline()) is not None


def deployment(*features: Feature, model: str = "linear_regression") -> Deployment:
    return Deployment("d", "public", "t", "y", features, model, ("id",))


@pytest.mark.parametrize("features", [
    (Feature("a", "number"), Feature("b", "number")),
    (Feature("a", "number"), Feature("city", "category")),
], ids=["numbers only", "with a category"])
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
    assert fused._fused[1] is not None  # it was the fused path
    # (pickles differ: river's pipelines cache their call plans once they learned themselves)
    assert fused_learning._state(fused.estimator) == fused_learning._state(plain.estimator)
    assert fused.samples_learned == plain.samples_learned == 400


def test_online_model_score_then_learn_of_a_classifier_equals_rivers_score():
    features = (Feature("a", "number"), Feature("b", "number"))
    fused = OnlineModel.fresh(deployment(*features, model="logistic_regression"))
    plain = OnlineModel.fresh(deployment(*features, model="logistic_regression"))
    assert fused.spec.task == "binary"
    rng = random.Random(4)
    for _ in range(300):
        x = {"a": rng.gauss(0, 3), "b": rng.uniform(-1, 1)}
        y = x["a"] + rng.gauss(0, 1) > 0
        expected = plain.score(x)
        plain.learn(x, y)
        assert fused.score_then_learn(x, y) == expected
    assert fused._fused is not None and fused._fused[1] is not None  # it was the fused path
    for a, b in zip(fused.estimator.steps.values(), plain.estimator.steps.values(),
                    strict=True):
        assert pickle.dumps(a) == pickle.dumps(b)


def category_rows(seed: int, n: int, cities: int = 6):
    """Numbers as in rows(), a category whose values keep coming (new ones late), two more
    that are often missing; the numbers sometimes missing too; columns in any order (with
    three categories a row's one-hot terms are summed in the encoder's order, not the row's:
    floating-point addition of three terms is not associative)."""
    rng = random.Random(seed)
    for k, (x, y) in enumerate(rows(seed, n)):
        x["city"] = f"c{rng.randrange(min(cities, 1 + k // 50))}"
        if rng.random() < 0.6:
            x["Plan Name"] = rng.choice(["free", "pro", "Pro", "é"])
        if rng.random() < 0.7:
            x["tier"] = rng.choice(["gold", "silver", "bronze", "lead"])
        items = list(x.items())
        rng.shuffle(items)  # rows list their columns in any order: the sums must not care
        yield dict(items), y


def stage(make=linear_model.LinearRegression):
    """The catalog's pipeline for a table with a category feature."""
    model = preprocessing_stage() | make()
    assert type(model) is type(get_model("linear_regression").build(categories=True))
    return model


def cat_state(model) -> list:
    """Scaler, encoder and regression state, each number as its bits."""
    assert fused_learning._parts(model) is not None
    return fused_learning._state(model)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("make", [linear_model.LinearRegression, linear_model.LogisticRegression])
def test_through_the_one_hot_branch_equal_rivers_bit_for_bit(seed, make):
    ours, theirs = stage(make), stage(make)
    step = score_then_learn(ours)
    assert step is not None
    logistic = make is linear_model.LogisticRegression
    rng = random.Random(seed)
    stepped_aside = 0
    for n, (x, y) in enumerate(category_rows(seed, 1200)):
        if logistic:
            y = rng.random() < 0.4
        expected = (theirs.predict_proba_one if logistic else theirs.predict_one)(dict(x))
        theirs.learn_one(dict(x), y)
        got = step(dict(x), y)
        if got is None:  # only once a weight is not finite: river's own calls from there
            stepped_aside += 1
            got = (ours.predict_proba_one if logistic else ours.predict_one)(dict(x))
            ours.learn_one(dict(x), y)
        assert repr(got) == repr(expected), (seed, n)
        if n % 200 == 0:
            assert cat_state(ours) == cat_state(theirs), (seed, n)
    assert cat_state(ours) == cat_state(theirs)
    assert stepped_aside < 1200  # the fused step did the work


def test_categories_river_learned_meanwhile_take_their_places():
    ours, theirs = stage(), stage()
    step = score_then_learn(ours)
    for n, (x, y) in enumerate(category_rows(5, 600, cities=40)):
        expected = theirs.predict_one(dict(x))
        theirs.learn_one(dict(x), y)
        if n % 7 == 3:  # a row river learns on the same model (e.g. before a restore)
            got = ours.predict_one(dict(x))
            ours.learn_one(dict(x), y)
        else:
            got = step(dict(x), y)
        assert repr(got) == repr(expected), n
    assert cat_state(ours) == cat_state(theirs)


@pytest.mark.parametrize("x", [
    {"city_Lyon": 1.5, "city": "Lyon"},  # a number's name is a one-hot name
    {"a_b": "c", "a": "b_c"},  # two categories, one name
])
def test_a_row_whose_one_hot_names_collide_is_left_to_river(x):
    model = stage()
    step = score_then_learn(model)
    step({"city": "Lyon", "a": 1.0}, 1.0)
    before = cat_state(model)
    assert step(dict(x), 2.0) is None
    assert cat_state(model) == before


def test_a_gradient_that_is_not_finite_updates_every_weight_as_river_does():
    ours, theirs = stage(), stage()
    step = score_then_learn(ours)
    for x, y in [({"a": 1.0, "city": "Lyon"}, 1.0), ({"a": 2.0, "city": "Oslo"}, 3.0),
                 ({"a": 0.5, "city": "Lima"}, math.nan), ({"a": 1.5, "city": "Oslo"}, 2.0)]:
        expected = theirs.predict_one(dict(x))
        theirs.learn_one(dict(x), y)
        got = step(dict(x), y)
        if got is None:  # NaN weights now: river's own calls
            got = ours.predict_one(dict(x))
            ours.learn_one(dict(x), y)
        assert repr(got) == repr(expected)
    assert repr(cat_state(ours)) == repr(cat_state(theirs))
    assert all(math.isnan(w) for w in ours["LinearRegression"].weights.values())


def in_step(ours, theirs, rows, logistic=False, step=None):
    """Each row through the fused step (river's own calls on ``ours`` where it steps aside,
    as OnlineModel does) and through river on ``theirs``: answers and state bit for bit."""
    step = step or score_then_learn(ours)
    for n, (x, y) in enumerate(rows):
        got = step(dict(x), y)
        if got is None:
            got = (ours.predict_proba_one if logistic else ours.predict_one)(dict(x))
            ours.learn_one(dict(x), y)
        expected = (theirs.predict_proba_one if logistic else theirs.predict_one)(dict(x))
        theirs.learn_one(dict(x), y)
        assert repr(got) == repr(expected), n
        assert cat_state(ours) == cat_state(theirs), n


def test_a_one_hot_name_two_features_share_keeps_its_first_place():
    # "a"="b_c" and "a_b"="c" are both "a_b_c": the encoder keeps the name where it was
    rng = random.Random(1)
    rows = [({"a": "b_c"}, 1.0), ({"p": "u"}, 2.0), ({"q": "v"}, 3.0), ({"a_b": "c"}, 4.0)]
    rows += [({"a": "b_c", "p": "u", "q": "v"}, rng.uniform(-10, 10)) for _ in range(50)]
    in_step(stage(), stage(), rows)


def test_a_weight_river_made_non_finite_in_between_is_seen():
    make = lambda: preprocessing_stage() | linear_model.LinearRegression(  # noqa: E731
        optimizer=optim.SGD(1e300))
    rows = [({"c": "A", "q": "Z"}, 1.0), ({"c": "B", "q_Z": 1.0}, 1e153), ({"c": "A"}, 1.0)]
    in_step(make(), make(), rows)  # the second row collides: river learns it, c_A overflows


def test_categories_the_encoder_learned_in_river_s_learn_during_predict_get_their_weights():
    ours, theirs = stage(), stage()
    step = score_then_learn(ours)  # the same step throughout, as a learner keeps it
    in_step(ours, theirs, [({"c": "A"}, 1.0)], step=step)
    with compose.learn_during_predict():
        for model in (ours, theirs):
            model.predict_one({"c": "B"})
    in_step(ours, theirs, [({"c": "A"}, 1.0), ({"c": "B", "x": 2.0}, 3.0), ({"c": "A"}, 1.0)],
            step=step)
