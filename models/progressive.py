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
        self.metrics = {name: make() for name, make in METRICS[task]}
        self.n = 0

    def update(self, y_true: Any, scored: Score) -> None:
        """Count one labelled row; like river, a model with no answer yet is not scored."""
        self.observe(y_true, scored.prediction, scored.proba)

    def observe(self, y_true: Any, prediction: Any, proba: dict[Any, float] | None) -> None:
        """:meth:`update` from the parts of a score (the learner's served scores have no
        :class:`Score`: making one per label was a visible part of its cost)."""
        routes = self.__dict__.get("_routes")
        if routes is None:  # which metrics take the label, which the probabilities: once
            fused = _fused_regression(self.metrics)
            by_label = [fused] if fused is not None else [
                m.update for m in self.metrics.values() if getattr(m, "requires_labels", True)]
            by_proba = [m.update for m in self.metrics.values()
                        if not getattr(m, "requires_labels", True)]
            routes = self._routes = (by_label, by_proba)
        if prediction is not None:
            for update in routes[0]:
                update(y_true, prediction)
        if proba:  # None, or {} before a classifier saw any class
            for update in routes[1]:
                update(y_true, proba)
        self.n += 1

    def __getstate__(self) -> dict[str, Any]:
        """Snapshots hold the metrics, not the cached routes (bound methods, closures)."""
        state = dict(self.__dict__)
        state.pop("_routes", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Routes are rebuilt for the restored metrics, whatever a snapshot holds."""
        state = dict(state)
        state.pop("_routes", None)
        self.__dict__.update(state)

    def values(self) -> dict[str, float]:
        return {name: float(metric.get()) for name, metric in self.metrics.items()}


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
