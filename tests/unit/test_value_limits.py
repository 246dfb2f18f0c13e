"""The scorer's value limits keep every catalog model healthy: a model fed features at
±FEATURE_LIMIT and regression labels at ±LABEL_LIMIT, the largest the scorer lets through, must
never be found broken by :mod:`rowcast.models.health` (which pauses the deployment). At the
earlier limits a label of 1e77 broke the tree regressors at once, and a feature of ±1e75 broke
a tree classifier after 15,000 rows at one leaf (review finding)."""

from __future__ import annotations

import random

import pytest

from rowcast.models.catalog import CATALOG
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.features import FEATURE_LIMIT, build_features
from rowcast.models.health import problem
from rowcast.models.progressive import OnlineMetrics
from rowcast.models.scoring import LABEL_LIMIT, OnlineModel

FEATURES = (Feature("x", "number"), Feature("z", "number"))


def _label(task: str, i: int, z: float) -> object:
    if task == "regression":
        return LABEL_LIMIT * (1 if i % 2 else -1) if i % 5 == 0 else z
    if task == "binary":
        return z > 0
    return "high" if z > 0.5 else "low" if z < -0.5 else "mid"


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_values_at_the_limits_never_break_a_catalog_model(name: str) -> None:
    deployment = Deployment("d", "public", "t", "y", FEATURES, name, ("id",))
    model = OnlineModel.fresh(deployment)
    task = model.spec.task
    metrics = OnlineMetrics(task)
    rng = random.Random(7)
    for i in range(400):
        z = rng.gauss(0, 1)
        # the limit itself first, then alternating signs (the largest variance), then ordinary
        x = build_features({"x": FEATURE_LIMIT * (1 if i % 2 else -1) if i < 200 else z,
                            "z": z}, FEATURES)
        y = _label(task, i, z)
        if task != "anomaly":
            metrics.update(y, model.score(x))
        model.learn(x, y)
        if i % 50 == 49:
            assert problem(model, x, metrics) is None, (name, i)
