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
            by_label = [m.update for m in self.metrics.values()
                        if getattr(m, "requires_labels", True)]
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
        """Snapshots hold the metrics, not the cached routes (bound methods)."""
        state = dict(self.__dict__)
        state.pop("_routes", None)
        return state

    def values(self) -> dict[str, float]:
        return {name: float(metric.get()) for name, metric in self.metrics.items()}
