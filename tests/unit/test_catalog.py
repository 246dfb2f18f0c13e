"""The model catalog's contract, which every entry and every user factory must honour.

Like river's ``utils.estimator_checks``: one suite over every model, fed the feature dicts
``build_features`` makes (numbers, a category, a boolean, a timestamp, NULLs) and driven exactly as
``OnlineModel`` drives it in the scorer.
"""

from __future__ import annotations

import math
import pickle
import random
import statistics
from typing import Any

import pytest
from river import anomaly, forest, linear_model, neighbors, tree

from rowcast.core.errors import ConfigError
from rowcast.models.catalog import CATALOG, ModelSpec, get_model, is_custom, task_of
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.scoring import OnlineModel, Score

CUSTOM = "tests.unit.custom_models"
MODELS = sorted(CATALOG) + [f"{CUSTOM}:{f}" for f in ("churn", "spend", "plan", "odd")]
FEATURES = (Feature("age", "number"), Feature("income", "number"), Feature("city", "category"),
            Feature("vip", "boolean"), Feature("seen", "timestamp"))
TARGET_KIND = {"regression": "number", "binary": "boolean", "multiclass": "category",
               "anomaly": "number"}
CITY_EFFECT = {"Lyon": 0.0, "Oslo": 15.0, "Lima": -15.0}
LEARNED, CHECKED = 300, 30


def stream(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Rows as Debezium delivers them, labelled for every task; some values and labels NULL."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        age, city = rng.uniform(18, 80), rng.choice(sorted(CITY_EFFECT))
        level = age + CITY_EFFECT[city] + rng.gauss(0, 2)
        rows.append({
            "id": i, "age": None if i % 10 == 3 else round(age, 1),
            "income": str(round(rng.gauss(3000, 500), 2)), "city": None if i % 7 == 5 else city,
            "vip": i % 4 == 0, "seen": 1_700_000_000_000_000 + i * 3_607_000_000,
            "labels": {"regression": 2.0 * level, "binary": level > 50,
                       "multiclass": "gold" if level > 60 else "silver" if level > 40 else "bronze",
                       "anomaly": 1.0},
        })
    return rows


def online(spec: ModelSpec, estimator: Any = None) -> OnlineModel:
    deployment = Deployment("d", "public", "t", "y", FEATURES, spec.name, ("id",),
                            target_kind=TARGET_KIND[spec.task])
    return OnlineModel(deployment, spec, spec.build() if estimator is None else estimator)


def step(model: OnlineModel, row: dict[str, Any]) -> tuple[Score, Any]:
    """Score then learn one row as the scorer does; the feature dict must come back untouched."""
    labelled = dict(row, y=None if row["id"] % 13 == 0 else row["labels"][model.spec.task])
    x = model.features(labelled)
    before = dict(x)
    scored = model.score(x)
    y = model.label(labelled)
    if y is not None:
        model.learn(x, y)
    assert x == before, "the model modified the feature dict"
    return scored, y


def check_score(task: str, scored: Score, seen: set, learned: int) -> None:
    if scored.score is None:
        assert task == "multiclass" and learned == 0, "only an untrained classifier has no score"
        return
    assert isinstance(scored.score, float) and math.isfinite(scored.score), scored
    if task in ("binary", "multiclass"):
        assert 0.0 <= scored.score <= 1.0
        if learned:
            assert scored.prediction in seen, f"{scored.prediction!r} was never a label"


def check_learned(model: OnlineModel, history: list[tuple[Score, Any]], unseen: list[dict]) -> None:
    """Clearly better than knowing nothing: a constant guess, or no sense of what is usual."""
    tail = [(s, y) for s, y in history[-100:] if y is not None]
    labels = [y for _, y in history if y is not None]
    if model.spec.task == "regression":
        mae = statistics.mean(abs(s.score - y) for s, y in tail)
        mean = statistics.mean(labels[:-len(tail)])
        assert mae < 0.75 * statistics.mean(abs(mean - y) for _, y in tail), mae
    elif model.spec.task in ("binary", "multiclass"):
        accuracy = statistics.mean(s.prediction == y for s, y in tail)
        majority = max(statistics.mean(y == c for _, y in tail) for c in set(labels))
        assert accuracy > majority + 0.1, (accuracy, majority)
    else:
        usual = [model.score(model.features(r)).score for r in unseen]
        extreme = [model.score(model.features(dict(r, age=900, income="1e6"))).score for r in unseen]
        assert statistics.mean(extreme) > statistics.mean(usual)
        assert statistics.mean(e > u for e, u in zip(extreme, usual, strict=True)) >= 0.75


@pytest.mark.parametrize("name", MODELS)
def test_contract(name: str) -> None:
    spec = get_model(name)
    model, untouched = online(spec), online(spec)
    assert model.estimator is not untouched.estimator
    rows = stream(LEARNED + CHECKED)
    seen: set = set()
    history = []
    for row in rows[:LEARNED]:
        scored, y = step(model, row)
        check_score(spec.task, scored, seen, model.samples_learned - (y is not None))
        history.append((scored, y))
        if y is not None:
            seen.add(y)
    check_learned(model, history, rows[LEARNED:])

    # seeded and independent: a second build, untouched so far, replays the same scores
    assert [step(untouched, row)[0] for row in rows[:50]] == [s for s, _ in history[:50]]

    # a snapshot (a pickle) carries on where the live model is; to the last bit but for the
    # order some river classifiers sum a set of classes in, which a set rebuilt by pickle changes
    restored = online(spec, pickle.loads(pickle.dumps(model.estimator)))
    for row in rows[LEARNED:]:
        again, live = step(restored, row)[0], step(model, row)[0]
        assert again.prediction == live.prediction
        assert again.score == pytest.approx(live.score, rel=1e-12)
        assert again.proba == (live.proba and pytest.approx(live.proba, rel=1e-12))


def test_the_catalog_covers_every_task_and_the_required_families() -> None:
    assert {spec.task for spec in CATALOG.values()} == {"regression", "binary", "multiclass",
                                                        "anomaly"}
    finals = [list(spec.build().steps.values())[-1] for spec in CATALOG.values()]
    for family in (linear_model.LinearRegression, linear_model.LogisticRegression,
                   tree.HoeffdingAdaptiveTreeRegressor, tree.HoeffdingAdaptiveTreeClassifier,
                   forest.ARFRegressor, forest.ARFClassifier, neighbors.KNNRegressor,
                   neighbors.KNNClassifier, anomaly.HalfSpaceTrees):
        assert any(isinstance(f, family) for f in finals), family.__name__


@pytest.mark.parametrize("spec", CATALOG.values(), ids=list(CATALOG))
def test_entries_are_described_with_their_cost(spec: ModelSpec) -> None:
    assert not is_custom(spec.name)
    assert task_of(spec.build()) == spec.task
    assert "cost" in spec.description and len(spec.description) < 250


@pytest.mark.parametrize(("name", "task"), [
    (f"{CUSTOM}:churn", "binary"), (f"{CUSTOM}:spend", "regression"),
    (f"{CUSTOM}:plan", "multiclass"), (f"{CUSTOM}:odd", "anomaly"),
    ("river.linear_model:LinearRegression", "regression"),
    ("river.anomaly:HalfSpaceTrees", "anomaly"),
])
def test_a_custom_factory_gets_the_task_of_what_it_builds(name: str, task: str) -> None:
    spec = get_model(name)
    assert (spec.name, spec.task, is_custom(name)) == (name, task, True)
    assert spec.build() is not spec.build()


@pytest.mark.parametrize(("name", "message"), [
    ("no_such_package.models:make", "cannot import module 'no_such_package.models'"),
    (f"{CUSTOM}:nope", f"module '{CUSTOM}' has no attribute 'nope'"),
    (f"{CUSTOM}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable \\(it is a int\\)"),
    (f"{CUSTOM}:broken", "the factory raised RuntimeError: the model server is down"),
    (f"{CUSTOM}:scaler_only", "returned StandardScaler, which is not a river regressor"),
    ("builtins:dict", "returned dict, which is not a river regressor"),
    (":churn", "must be written 'module:factory'"),
    (f"{CUSTOM}:", "must be written 'module:factory'"),
])
def test_a_bad_custom_factory_is_a_config_error_naming_it(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        get_model(name)
    assert repr(name) in str(caught.value)


def test_unknown_names_list_the_catalog_and_the_custom_form() -> None:
    with pytest.raises(ConfigError, match="the catalog has: arf_classifier, .*module:factory"):
        get_model("gpt")


@pytest.mark.parametrize("name", ["hoeffding_tree_classifier", "arf_classifier",
                                  "logistic_regression"])
def test_a_boolean_target_scores_the_probability_of_true_whatever_the_model(name: str) -> None:
    """Swapping logistic_regression for a tree on the same boolean target must not flip what
    ``score`` means: ``WHERE score > 0.9`` selects likely-True rows with either (a classifier
    of any labels scored the predicted label's probability, so a confident False read 0.95)."""
    d = Deployment("fraud", "public", "payments", "flagged", (Feature("amount", "number"),),
                   name, ("id",))
    model = OnlineModel.fresh(d)
    rng = random.Random(3)
    for _ in range(400):
        amount = rng.uniform(0, 100)
        model.learn(model.features({"amount": amount}), amount > 70)
    low, high = (model.score(model.features({"amount": a})) for a in (5.0, 95.0))
    assert low.prediction is False and high.prediction is True
    for scored in (low, high):
        assert scored.score == pytest.approx(scored.proba[True])
    assert low.score < 0.5 < high.score
