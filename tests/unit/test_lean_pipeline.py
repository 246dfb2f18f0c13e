"""A deployment without category features gets its catalog pipeline without the type
selection and the one-hot branch, and learns and answers bit for bit as the full one.

Why: with numbers only, ``SelectType(Number) | scaler`` beside ``SelectType(str) |
OneHotEncoder`` in a ``TransformerUnion`` produces exactly the scaler's dict, at a cost: river's
``predict_one`` + ``learn_one`` of ``linear_regression`` took 12.7 µs per row through the full
stage and 4.5 through ``StandardScaler | LinearRegression`` (the learner's largest cost per
label). The scaler still copies the row, so no model ever holds the caller's dict; stages without
a scaler (``scale=False``) are kept as they are for that reason.
"""

from __future__ import annotations

import random

import pytest
from river import compose

from rowcast.models.batch_scoring import linear_plan
from rowcast.models.catalog import CATALOG
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.scoring import OnlineModel

NUMBERS = (Feature("a", "number"), Feature("b", "boolean"), Feature("c", "timestamp"))


def deployment(model: str, features=NUMBERS, target_kind: str = "number") -> Deployment:
    return Deployment("m", "public", "t", "y", features, model, ("id",), target_kind)


def kinds(estimator) -> list[str]:
    return [type(s).__name__ for s in estimator.steps.values()]


def rows(n: int, seed: int = 3) -> list[tuple[dict, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {k: rng.gauss(0, 1) * 10 ** rng.randint(-2, 4) for k in ("a", "b", "c", "c__hour")
             if rng.random() < 0.9}
        out.append((x, sum(x.values()) + rng.gauss(0, 1)))
    return out


def label(task: str, y: float):
    return y > 0 if task == "binary" else y


@pytest.mark.parametrize("name", [n for n, s in CATALOG.items() if s.task != "multiclass"])
def test_numbers_only_learn_and_answer_as_the_full_pipeline(name):
    spec = CATALOG[name]
    target = "boolean" if spec.task == "binary" else "number"
    lean = OnlineModel.fresh(deployment(name, target_kind=target))
    full = spec.build()
    for x, y in rows(600):
        assert lean.estimator.predict_one(dict(x)) == full.predict_one(dict(x)) \
            if spec.task != "anomaly" else \
            lean.estimator.score_one(dict(x)) == full.score_one(dict(x))
        if spec.task == "anomaly":
            lean.estimator.learn_one(dict(x))
            full.learn_one(dict(x))
        else:
            lean.estimator.learn_one(dict(x), label(spec.task, y))
            full.learn_one(dict(x), label(spec.task, y))


@pytest.mark.parametrize("name", ["linear_regression", "logistic_regression",
                                  "hoeffding_tree_regressor", "knn_regressor"])
def test_numbers_only_drop_the_type_selection_and_one_hot_branch(name):
    if name not in CATALOG:
        pytest.skip(f"no {name} in the catalog")
    target = "boolean" if CATALOG[name].task == "binary" else "number"
    lean = OnlineModel.fresh(deployment(name, target_kind=target)).estimator
    assert kinds(lean)[0] in ("StandardScaler", "MinMaxScaler")
    assert "TransformerUnion" not in kinds(lean)
    with_city = OnlineModel.fresh(deployment(name, NUMBERS + (Feature("city", "category"),),
                                             target)).estimator
    assert kinds(with_city)[0] == "TransformerUnion"


def test_a_stage_without_scaler_is_kept_whole():
    """Without a scaler the model would get the caller's own dict: kept as it was."""
    for name, spec in CATALOG.items():
        full = spec.build()
        first = next(iter(full.steps.values())) if isinstance(full, compose.Pipeline) else None
        if not isinstance(first, compose.TransformerUnion):
            continue
        numeric = [t for t in first.transformers.values()
                   if isinstance(t, compose.Pipeline) and len(t.steps) == 1]
        if numeric:  # SelectType(Number) alone: no scaler
            target = "boolean" if spec.task == "binary" else "number"
            lean = OnlineModel.fresh(deployment(name, target_kind=target)).estimator
            assert kinds(lean)[0] == "TransformerUnion", name


def test_the_batch_plan_scores_the_lean_pipeline_exactly():
    for name in ("linear_regression", "logistic_regression"):
        target = "boolean" if name == "logistic_regression" else "number"
        model = OnlineModel.fresh(deployment(name, target_kind=target))
        est = model.estimator
        data = rows(500, seed=7)
        for x, y in data:
            est.learn_one(dict(x), label(CATALOG[name].task, y))
        plan = linear_plan(est)
        assert plan is not None, name
        xs = [x for x, _ in rows(300, seed=11)]
        got = plan.predict_many(xs)
        want = [est.predict_proba_one(x) if target == "boolean" else est.predict_one(x)
                for x in xs]
        assert got == want
        assert plan.predict_many([{"a": 1.0, "b": "text"}]) == [None]  # river must say
