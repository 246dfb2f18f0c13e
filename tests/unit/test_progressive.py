"""Our online metrics equal river.evaluate.progressive_val_score on river's bundled datasets."""

from __future__ import annotations

import itertools

import pytest
from river import datasets, evaluate

from rowcast.models.catalog import get_model
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.progressive import METRICS, OnlineMetrics
from rowcast.models.scoring import OnlineModel

CASES = [
    (datasets.Bananas, "logistic_regression", 2000),
    (datasets.ChickWeights, "linear_regression", None),
    (datasets.Phishing, "hoeffding_tree_classifier", None),
    (datasets.TrumpApproval, "hoeffding_tree_regressor", None),
]


@pytest.mark.parametrize(("dataset", "model_name", "limit"), CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_metrics_equal_progressive_val_score(dataset, model_name, limit) -> None:
    rows = list(itertools.islice(dataset(), limit))
    spec = get_model(model_name)
    names = sorted({k for x, _ in rows for k in x})
    deployment = Deployment("d", "public", "t", "y", tuple(Feature(n, "number") for n in names),
                            model_name, ("id",))
    ours = OnlineModel.fresh(deployment)
    metrics = OnlineMetrics(spec.task)
    for x, y in rows:
        scored = ours.score(x)
        metrics.update(y, scored)
        ours.learn(x, y)

    for name, make in METRICS[spec.task]:
        reference = evaluate.progressive_val_score(rows, spec.build(), make()).get()
        assert metrics.values()[name] == reference, name
    assert metrics.n == len(rows)
