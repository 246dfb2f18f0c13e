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


def _numbers(metric) -> list:
    from rowcast.models.progressive import _state
    return _state(metric)


def test_regression_metrics_follow_rivers_own_updates_bit_for_bit() -> None:
    """The learner's regression metrics are updated by one fused call (issue 15); after any
    stream, a snapshot and its restore included, every number they hold is river's."""
    import pickle
    import random

    from river import metrics as river_metrics

    rng = random.Random(3)
    ours = OnlineMetrics("regression")
    theirs = [river_metrics.MAE(), river_metrics.RMSE(), river_metrics.R2()]
    for i in range(5000):
        y_true = rng.choice([rng.gauss(0, 1), rng.randint(-10**6, 10**6), rng.uniform(-1e150, 1e150),
                             rng.uniform(-1e-300, 1e-300), 0.0])
        y_pred = rng.choice([rng.gauss(0, 1), float(rng.randint(-9, 9)), y_true, -0.0])
        ours.observe(y_true, y_pred, None)
        for m in theirs:
            m.update(y_true, y_pred)
        if i == 2500:  # a checkpoint: the restored metrics go on the same way
            ours = pickle.loads(pickle.dumps(ours))
    assert len(ours._routes[0]) == 1  # the fused update was the one used
    assert [_numbers(m) for m in ours.metrics.values()] == [_numbers(m) for m in theirs]
    assert ours.n == 5000


def test_regression_metrics_overflow_as_rivers_do() -> None:
    """A squared error beyond float range raises as river's own update does, after the same
    metrics were updated (the learner then keeps no checkpoint of the half-updated state)."""
    from river import metrics as river_metrics

    ours = OnlineMetrics("regression")
    theirs = [river_metrics.MAE(), river_metrics.RMSE(), river_metrics.R2()]
    ours.observe(1.0, 2.0, None)
    for m in theirs:
        m.update(1.0, 2.0)
    with pytest.raises(OverflowError):
        ours.observe(1e300, -1e300, None)
    with pytest.raises(OverflowError):
        for m in theirs:
            m.update(1e300, -1e300)
    assert [_numbers(m) for m in ours.metrics.values()] == [_numbers(m) for m in theirs]


def test_a_river_release_renaming_what_the_fused_update_reads_falls_back(monkeypatch) -> None:
    """The fused update reads river's private attributes; a release that renames one must
    leave river's own updates in use, not fail every label."""
    from river import metrics as river_metrics
    from river import stats

    def init(self):
        self._yv = stats.Var()
        self._residual_sum_of_squares = 0

    def update(self, y_true, y_pred, w=1.0):
        self._yv.update(y_true, w=w)
        self._residual_sum_of_squares += (y_true - y_pred) * (y_true - y_pred) * w

    def get(self):
        n = self._yv.mean.n
        return 1 - self._residual_sum_of_squares / ((n - 1) * self._yv.get()) if n > 1 else 0.0

    monkeypatch.setattr(river_metrics.R2, "__init__", init)
    monkeypatch.setattr(river_metrics.R2, "update", update)
    monkeypatch.setattr(river_metrics.R2, "get", get)
    ours = OnlineMetrics("regression")
    theirs = [river_metrics.MAE(), river_metrics.RMSE(), river_metrics.R2()]
    for y_true, y_pred in ((3.0, 1.0), (5.0, 4.0), (-2.0, 0.5)):
        ours.observe(y_true, y_pred, None)
        for m in theirs:
            m.update(y_true, y_pred)
    assert len(ours._routes[0]) == 3  # river's own three updates
    assert list(ours.values().values()) == [float(m.get()) for m in theirs]


def test_a_snapshot_holding_routes_gets_them_rebuilt() -> None:
    import pickle

    metrics = OnlineMetrics("regression")
    metrics.observe(3.0, 1.0, None)
    state = dict(metrics.__dict__)  # as if a snapshot had kept an old shape of routes
    state["_routes"] = [(print, True)]
    restored = OnlineMetrics.__new__(OnlineMetrics)
    restored.__setstate__(state)
    restored.observe(5.0, 4.0, None)
    metrics.observe(5.0, 4.0, None)
    assert restored.values() == metrics.values()
    assert pickle.loads(pickle.dumps(restored)).values() == metrics.values()
