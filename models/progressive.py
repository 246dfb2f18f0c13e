"""Progressive validation: each label is compared with the score its row got, before learning.

The running metrics are river's own metric objects updated exactly as
``river.evaluate.progressive_val_score`` updates them (label metrics with the predicted label,
probability metrics with the class probabilities), so on a stream whose rows carry their label the
figures are *equal* to river's, not merely close.

>>> m = OnlineMetrics("regression")
>>> from rowcast.models.scoring import Score
>>> m.update(3.0, Score(1.0, 1.0)); m.update(5.0, Score(4.0, 4.0))
>>> m.values()["MAE"]
1.5
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from river import metrics

from rowcast.models.catalog import Task
from rowcast.models.scoring import Score

METRICS: dict[Task, tuple[tuple[str, Callable[[], metrics.base.Metric]], ...]] = {
    "regression": (("MAE", metrics.MAE), ("RMSE", metrics.RMSE), ("R2", metrics.R2)),
    "binary": (("Accuracy", metrics.Accuracy), ("LogLoss", metrics.LogLoss),
               ("ROCAUC", metrics.ROCAUC)),
    "multiclass": (("Accuracy", metrics.Accuracy), ("MacroF1", metrics.MacroF1),
                   ("CrossEntropy", metrics.CrossEntropy)),
    "anomaly": (),
}


class OnlineMetrics:
    """The running metrics of one deployment and model version."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self._metrics = {name: make() for name, make in METRICS[task]}
        self.n = 0

    @property
    def metrics(self) -> dict[str, metrics.base.Metric]:
        """river's metric objects, up to date (counts still tallied are added first)."""
        self._catch_up()
        return self._metrics

    def update(self, y_true: Any, scored: Score) -> None:
        """Count one labelled row; like river, a model with no answer yet is not scored."""
        self.observe(y_true, scored.prediction, scored.proba)

    def observe(self, y_true: Any, prediction: Any, proba: dict[Any, float] | None) -> None:
        """:meth:`update` from the parts of a score (the learner's served scores have no
        :class:`Score`: making one per label was a visible part of its cost)."""
        routes = self.__dict__.get("_routes")
        if routes is None:  # which metrics take the label, which the probabilities: once
            routes = self._routes = _routes(self._metrics)
        if prediction is not None:
            for update in routes[0]:
                update(y_true, prediction)
        if proba:  # None, or {} before a classifier saw any class
            for update in routes[1]:
                update(y_true, proba)
        self.n += 1

    def _catch_up(self) -> None:
        routes = self.__dict__.get("_routes")
        if routes is not None:
            for catch_up in routes[2]:
                catch_up()

    def __getstate__(self) -> dict[str, Any]:
        """Snapshots hold the metrics, up to date, not the cached routes (bound methods,
        closures, tallies); under the name ``metrics``, as before tallies existed."""
        self._catch_up()
        state = dict(self.__dict__)
        state.pop("_routes", None)
        state["metrics"] = state.pop("_metrics")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Routes are rebuilt for the restored metrics, whatever a snapshot holds."""
        state = dict(state)
        state.pop("_routes", None)
        if "metrics" in state:
            state["_metrics"] = state.pop("metrics")
        self.__dict__.update(state)

    def values(self) -> dict[str, float]:
        return {name: float(metric.get()) for name, metric in self.metrics.items()}


Update = Callable[[Any, Any], None]


def _routes(found: dict[str, metrics.base.Metric]) -> tuple[list[Update], list[Update],
                                                           list[Callable[[], None]]]:
    """How each metric is updated: the label metrics' updates, the probability metrics'
    updates, and what brings tallied metrics up to date (see :func:`_tally`)."""
    fused = _fused_regression(found)
    if fused is not None:
        return [fused], [], []
    by_label: list[Update] = []
    by_proba: list[Update] = []
    catch_ups: list[Callable[[], None]] = []
    for metric in found.values():
        tally = _tally(metric)
        if tally is not None:
            update, catch_up = tally
            catch_ups.append(catch_up)
        else:
            update = _fused_log_loss(metric) or metric.update
        (by_label if getattr(metric, "requires_labels", True) else by_proba).append(update)
    return by_label, by_proba, catch_ups


# (y_true, y_pred) pairs the fused update must follow bit for bit before it is trusted
_CHECK = ((3, 2.5), (-0.5, 0.0), (2.0, 2), (7.25, 8.0), (1e150, -1e150), (1e-300, 3e-300),
          (0.1, 0.2), (-123456.789, 98765.4321), (5, 5))


def _fused_regression(found: dict[str, metrics.base.Metric]) -> Callable[[Any, Any], None] | None:
    """MAE, RMSE and R2 updated by one call, with river's own arithmetic on river's own state.

    Why: three ``update`` calls go through ``MeanMetric.update``, ``_eval``, ``Mean.update``
    and ``Var.update`` (a dozen Python calls, ~0.9 µs per label and set, twice per label in
    the learner: progressive and served). This does the same float operations, in the same
    order, on the same attributes, so every figure stays *equal* to river's (issue 15: "the
    learner's progressive metrics stay exactly equal to river's"). It is used only after it
    matched river's own updates bit for bit on :data:`_CHECK` here, so a river release that
    changes these classes falls back to their own ``update``.

    >>> from river import metrics
    >>> fused = _fused_regression({"MAE": metrics.MAE(), "RMSE": metrics.RMSE(), "R2": metrics.R2()})
    >>> fused is not None
    True
    >>> _fused_regression({"MAE": metrics.MAE()}) is None
    True
    """
    if [type(m) for m in found.values()] != [metrics.MAE, metrics.RMSE, metrics.R2]:
        return None
    try:
        ours = (metrics.MAE(), metrics.RMSE(), metrics.R2())
        theirs = (metrics.MAE(), metrics.RMSE(), metrics.R2())
        check = _fuse(*ours)
        for y_true, y_pred in _CHECK:
            check(y_true, y_pred)
            for m in theirs:
                m.update(y_true, y_pred)
            if [_state(m) for m in ours] != [_state(m) for m in theirs]:
                return None
        return _fuse(*found.values())
    except Exception:  # e.g. an attribute renamed by a river release: river's own updates
        return None


def _fuse(mae: metrics.MAE, rmse: metrics.RMSE, r2: metrics.R2) -> Callable[[Any, Any], None]:
    """The update of :func:`_fused_regression`: river's ``Mean.update`` (``w=1.0``),
    ``MAE._eval``, ``MSE._eval``, ``Var.update`` and ``R2.update``, written out."""
    abs_mean, sq_mean = mae._mean, rmse._mean
    y_var = r2._y_var
    y_mean = y_var.mean

    def update(y_true: Any, y_pred: Any) -> None:
        x = abs(y_true - y_pred)
        abs_mean.n += 1.0
        abs_mean._mean += (1.0 / abs_mean.n) * (x - abs_mean._mean)
        x = (y_true - y_pred) ** 2
        sq_mean.n += 1.0
        sq_mean._mean += (1.0 / sq_mean.n) * (x - sq_mean._mean)
        mean_old = y_mean._mean
        y_mean.n += 1.0
        y_mean._mean += (1.0 / y_mean.n) * (y_true - y_mean._mean)
        y_var._S += 1.0 * (y_true - mean_old) * (y_true - y_mean._mean)
        r2._residual_sum_of_squares += (y_true - y_pred) * (y_true - y_pred) * 1.0

    return update


def _state(metric: metrics.base.Metric) -> list[tuple[str, Any]]:
    """Every number a metric holds, nested objects included, for a bit-for-bit comparison."""
    out = []
    for name, value in sorted(vars(metric).items()):
        if isinstance(value, int | float):
            out.append((name, value.hex() if isinstance(value, float) else value))
        elif hasattr(value, "__dict__"):
            out.append((name, _state(value)))
    out.append(("get", float(metric.get()).hex()))
    return out


# (y_true, y_pred) pairs a tally must follow exactly before it is trusted: bools, ints and
# strings as labels; probabilities on, just above and just below every threshold, 0, 1, -0.0,
# NaN, a dict without the positive class and a bare float
_TALLY_CHECK = ((True, True), (False, True), (True, False), (1, True), (0, False), ("a", "b"),
                ("b", "b"), (None, True), (True, 1), (False, 0.0))


def _proba_check(thresholds: list[float]) -> list[tuple[Any, Any]]:
    """(y_true, probabilities) pairs a tallied or fused probability metric must follow
    exactly: on, just above and just below each of ``thresholds``, at the edges, NaN."""
    probas: list[Any] = [0.0, 1.0, -0.0, math.nan, 0.5, 1e-300, 1 - 1e-16]
    for t in thresholds:
        probas += [t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)]
    pairs: list[tuple[Any, Any]] = []
    for i, p in enumerate(probas):
        y_true = (True, False, 1, 0, "x")[i % 5]
        pairs.append((y_true, {True: p, False: 1 - p} if i % 3 else p))
    pairs += [(True, {False: 0.7}), (False, {"other": 0.2, True: 0.8})]
    return pairs


def _tally(metric: metrics.base.Metric) -> tuple[Update, Callable[[], None]] | None:
    """An update that only counts, and what adds the counts to river's own state, for
    ``metrics.ROCAUC`` and ``metrics.Accuracy``; None for any other metric.

    Why: ``ROCAUC.update`` updates ten confusion matrices, one per threshold, through ten
    Python calls: 6.2 µs per label, twice per label in the learner (progressive and served),
    a third of a logistic regression's whole cost per label. Their state is counts: each
    update adds ``w = 1.0`` to a few cells. Adding ``c`` at once is exact where adding 1.0
    ``c`` times is (integers below 2**53), so the counts are kept per (label, how many
    thresholds the probability passes) and added to the matrices by the catch-up, which
    :class:`OnlineMetrics` calls before anything reads the metrics (``values``, ``metrics``,
    a snapshot, a copy). Every figure stays *equal* to river's, as for
    :func:`_fused_regression`; the tally is used only after it matched river's own updates
    exactly on a check stream here, otherwise river's own ``update`` is.

    >>> from river import metrics
    >>> metric, river_own = metrics.ROCAUC(), metrics.ROCAUC()
    >>> update, catch_up = _tally(metric)
    >>> for y, p in ((True, 0.8), (False, 0.3), (True, 0.4), (False, 0.9)):
    ...     update(y, {True: p, False: 1 - p})
    ...     river_own.update(y, {True: p, False: 1 - p})
    >>> catch_up()
    >>> float(metric.get()) == float(river_own.get())
    True
    >>> _tally(metrics.MacroF1()) is None
    True
    """
    try:
        if type(metric) is metrics.ROCAUC:
            make = _auc_tally
            thresholds = list(metric.thresholds)
            if thresholds != sorted(thresholds) or len(metric.cms) != len(thresholds):
                return None
            check = _proba_check(thresholds)
            fresh = lambda: metrics.ROCAUC(metric.n_thresholds, metric.pos_val)  # noqa: E731
            matrices = lambda m: m.cms  # noqa: E731
        elif type(metric) is metrics.Accuracy:
            make, check, fresh = _cm_tally, _TALLY_CHECK, metrics.Accuracy
            matrices = lambda m: [m.cm]  # noqa: E731
        else:
            return None
        ours, theirs = fresh(), fresh()
        update, catch_up = make(ours)
        for n, (y_true, y_pred) in enumerate(check * 2):
            update(y_true, y_pred)
            theirs.update(y_true, y_pred)
            if n % 7 == 3:  # catch up mid-stream too: the counts go on from there
                catch_up()
        catch_up()
        same = [_matrix(m) for m in matrices(ours)] == [_matrix(m) for m in matrices(theirs)]
        if not same or float(ours.get()).hex() != float(theirs.get()).hex():
            return None
        return make(metric)
    except Exception:  # e.g. an attribute renamed by a river release: river's own update
        return None


def _add(cm: metrics.ConfusionMatrix, y_true: Any, y_pred: Any, count: int) -> None:
    """``ConfusionMatrix.update(y_true, y_pred, w=1.0)`` done ``count`` times, in one step."""
    w = float(count)
    cm.n_samples += count
    cm.data[y_true][y_pred] += w
    cm.total_weight += w
    cm.sum_row[y_true] += w
    cm.sum_col[y_pred] += w
    if y_true == y_pred:
        cm._total_true_positives += w


def _cm_tally(metric: metrics.Accuracy) -> tuple[Update, Callable[[], None]]:
    """Accuracy's matrix, tallied by (label, predicted label)."""
    counts: dict[tuple[Any, Any], int] = {}
    get = counts.get
    cm = metric.cm

    def update(y_true: Any, y_pred: Any) -> None:
        key = (y_true, y_pred)
        counts[key] = get(key, 0) + 1

    def catch_up() -> None:
        for (y_true, y_pred), count in counts.items():
            _add(cm, y_true, y_pred, count)
        counts.clear()

    return update, catch_up


def _auc_tally(metric: metrics.ROCAUC) -> tuple[Update, Callable[[], None]]:
    """ROCAUC's matrices, tallied by (label is the positive class, thresholds passed): the
    probability ``p`` passes threshold ``t`` (``p > t``, river's test) for exactly the
    ``bisect_left(thresholds, p)`` lowest thresholds, as they are sorted."""
    counts: dict[tuple[Any, int], int] = {}
    get = counts.get
    thresholds, cms, pos_val = list(metric.thresholds), metric.cms, metric.pos_val

    def update(y_true: Any, y_pred: Any) -> None:
        p_true = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
        key = (y_true == pos_val, bisect_left(thresholds, p_true))
        counts[key] = get(key, 0) + 1

    def catch_up() -> None:
        for (positive, passed), count in counts.items():
            for i, cm in enumerate(cms):
                _add(cm, positive, i < passed, count)
        counts.clear()

    return update, catch_up


def _matrix(cm: metrics.ConfusionMatrix) -> tuple:
    """A confusion matrix's whole state, floats by their bits (and types), for comparisons."""
    def exact(v: Any) -> Any:
        return (type(v).__name__, v.hex() if isinstance(v, float) else v)
    cells = {(r, c): exact(v) for r, row in cm.data.items() for c, v in row.items()}
    return (exact(cm.n_samples), exact(cm.total_weight), exact(cm._total_true_positives), cells,
            {k: exact(v) for k, v in cm.sum_row.items()},
            {k: exact(v) for k, v in cm.sum_col.items()})


def _fused_log_loss(metric: metrics.base.Metric) -> Update | None:
    """``metrics.LogLoss.update`` written out: river's ``_eval`` (its clamp, its logarithms)
    and ``Mean.update`` (``w=1.0``), the same float operations in the same order, without
    the five Python calls between them (~0.5 µs per label and set). Used only after it
    matched river's own update bit for bit on a check stream; None for any other metric.

    >>> from river import metrics
    >>> _fused_log_loss(metrics.LogLoss()) is not None, _fused_log_loss(metrics.MAE())
    (True, None)
    """
    if type(metric) is not metrics.LogLoss:
        return None
    try:
        ours, theirs = metrics.LogLoss(), metrics.LogLoss()
        check = _fuse_log_loss(ours)
        for y_true, y_pred in _proba_check([0.0, 1e-15, 0.5, 1 - 1e-15, 1.0]) * 2:
            check(y_true, y_pred)
            theirs.update(y_true, y_pred)
        if _state(ours) != _state(theirs):
            return None
        return _fuse_log_loss(metric)
    except Exception:  # e.g. an attribute renamed by a river release: river's own update
        return None


def _fuse_log_loss(metric: metrics.LogLoss) -> Update:
    mean = metric._mean
    log = math.log

    def update(y_true: Any, y_pred: Any) -> None:
        p_true = y_pred.get(True, 0.0) if isinstance(y_pred, dict) else y_pred
        p_true = max(min(p_true, 1 - 1e-15), 1e-15)
        x = -log(p_true) if y_true else -log(1 - p_true)
        mean.n += 1.0
        mean._mean += (1.0 / mean.n) * (x - mean._mean)

    return update
