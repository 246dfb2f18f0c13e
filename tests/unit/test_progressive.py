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


def _binary_stream(n: int, seed: int):
    import math
    import random

    rng = random.Random(seed)
    for _ in range(n):
        y_true = rng.random() < 0.4
        p = rng.choice([rng.random(), round(rng.random(), 1), 1 / 9, 2 / 9 - 1e-7, 0.0, 1.0,
                        math.nextafter(1 / 3, 1.0), math.nan])
        yield y_true, p > 0.5, {True: p, False: 1 - p}


def _binary_state(metrics_by_name) -> list:
    from rowcast.models.progressive import _matrix

    out = []
    for metric in metrics_by_name:
        matrices = metric.cms if hasattr(metric, "cms") else [getattr(metric, "cm", None)]
        out.append([_matrix(cm) for cm in matrices if cm is not None])
        out.append(float(metric.get()).hex())
        if not matrices[0]:  # LogLoss: its running mean, to the bit
            out.append(_numbers(metric))
    return out


def test_binary_metrics_are_tallied_and_stay_rivers_bit_for_bit() -> None:
    """ROCAUC's ten confusion matrices and Accuracy's are tallied, not updated per label
    (issue 15: 6.2 µs per ROCAUC update, twice per label); whatever reads them (values, a
    snapshot, a copy, ``.metrics``) sees river's own state, equal to the bit."""
    import copy
    import pickle

    from river import metrics as river_metrics

    ours = OnlineMetrics("binary")
    theirs = [river_metrics.Accuracy(), river_metrics.LogLoss(), river_metrics.ROCAUC()]
    for i, (y_true, label, proba) in enumerate(_binary_stream(6000, 5)):
        ours.observe(y_true, label, proba)
        theirs[0].update(y_true, label)
        theirs[1].update(y_true, proba)
        theirs[2].update(y_true, proba)
        if i == 1500:  # a checkpoint: the restored metrics go on the same way
            ours = pickle.loads(pickle.dumps(ours))
        if i == 3000:  # a guarded apply's copy
            ours = copy.deepcopy(ours)
        if i % 997 == 0:  # figures read mid-stream (status, health) change nothing
            assert [v.hex() for v in ours.values().values()] == [float(m.get()).hex()
                                                                  for m in theirs]
    assert len(ours._routes[2]) == 2  # Accuracy and ROCAUC were tallied
    assert _binary_state(ours.metrics.values()) == _binary_state(theirs)
    assert ours.n == 6000


def test_a_river_release_changing_the_confusion_matrix_leaves_rivers_update_in_use(
        monkeypatch) -> None:
    """The tallies write river's private attributes; a release that renames one must leave
    river's own updates in use (and the figures right), not fail every label."""
    from river import metrics as river_metrics

    def update(self, y_true, y_pred, w=1.0):
        self.n_samples += 1
        self.data[y_true][y_pred] += w
        self.total_weight += w
        self.sum_row[y_true] += w
        self.sum_col[y_pred] += w
        if y_true == y_pred:
            # renamed, as a release might
            self.total_true_positives_ = getattr(self, "total_true_positives_", 0.0) + w

    monkeypatch.setattr(river_metrics.ConfusionMatrix, "update", update)
    monkeypatch.setattr(river_metrics.ConfusionMatrix, "total_true_positives",
                        property(lambda self: getattr(self, "total_true_positives_", 0.0)))
    ours = OnlineMetrics("binary")
    theirs = [river_metrics.Accuracy(), river_metrics.LogLoss(), river_metrics.ROCAUC()]
    for y_true, label, proba in _binary_stream(300, 6):
        ours.observe(y_true, label, proba)
        theirs[0].update(y_true, label)
        theirs[1].update(y_true, proba)
        theirs[2].update(y_true, proba)
    assert ours._routes[2] == []
    assert [v.hex() for v in ours.values().values()] == [float(m.get()).hex() for m in theirs]


def test_multiclass_metrics_stay_rivers_bit_for_bit() -> None:
    """Accuracy's matrix is tallied for any labels (its keys go in first-seen order, as
    river's own updates put them); MacroF1 and CrossEntropy keep river's updates."""
    import pickle
    import random

    from river import metrics as river_metrics

    rng = random.Random(11)
    classes = ["Lyon", "Oslo", "Lima", 3, True]
    ours = OnlineMetrics("multiclass")
    theirs = [river_metrics.Accuracy(), river_metrics.MacroF1(), river_metrics.CrossEntropy()]
    for i in range(4000):
        weights = [rng.random() for _ in classes]
        proba = {c: w / sum(weights) for c, w in zip(classes, weights, strict=True)}
        y_true, label = rng.choice(classes), max(proba, key=proba.get)
        ours.observe(y_true, label, proba)
        theirs[0].update(y_true, label)
        theirs[1].update(y_true, label)
        theirs[2].update(y_true, proba)
        if i == 2000:
            ours = pickle.loads(pickle.dumps(ours))
    assert len(ours._routes[2]) == 1  # Accuracy was tallied
    assert [v.hex() for v in ours.values().values()] == [float(m.get()).hex() for m in theirs]
    from rowcast.models.progressive import _matrix
    assert _matrix(ours.metrics["Accuracy"].cm) == _matrix(theirs[0].cm)
    assert list(ours.metrics["Accuracy"].cm.sum_row) == list(theirs[0].cm.sum_row)
