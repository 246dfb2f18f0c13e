"""Score a row, then learn from it when its label is known: the online loop, with no I/O.

Prediction comes *before* learning, so the score a row received is the honest one and the running
metric equals river's progressive validation. The model's task decides what "the score" is:

==========  ===========================  ===================================
task        ``prediction``               ``score`` (a number, for SQL)
==========  ===========================  ===================================
regression  predicted value              the same value
binary      predicted label (bool)       P(label is True)
multiclass  predicted label              probability of the predicted label;
                                         P(label is True) when the labels are booleans
anomaly     None                         anomaly score
==========  ===========================  ===================================

>>> from rowcast.models.deployment import Deployment, Feature
>>> d = Deployment("spend", "public", "c", "y", (Feature("x", "number"),), "linear_regression", ("id",))
>>> m = OnlineModel.fresh(d)
>>> m.score({"x": 1.0}).score
0.0
>>> m.learn({"x": 1.0}, 2.0); m.samples_learned
1
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import base

from rowcast.models.batch_scoring import linear_plan
from rowcast.models.catalog import ModelSpec, get_model
from rowcast.models.deployment import Deployment
from rowcast.models.features import FeatureError, MissingColumn, as_number, build_features
from rowcast.models.fused_learning import Step, score_then_learn

# the largest regression label learned: river's metrics square the error (MSE, RMSE, R2's
# variance) and its tree regressors sum squared errors per leaf; a float squared beyond ~1.3e154
# raises OverflowError mid-update, and a state number whose square overflows is a broken model
# (rowcast.models.health): either pauses the deployment until a rollback
# (rowcast.streams.learner). 1e150 kept the metrics safe but not the trees (a single label of
# 1e77 broke hoeffding_tree_regressor); 1e50 keeps a sum of 1e53 such squares finite
LABEL_LIMIT = 1e50


@dataclass(frozen=True, slots=True)
class Score:
    """What the model says about one row (``proba`` for classifiers, for their metrics)."""

    prediction: Any
    score: float | None
    proba: dict[Any, float] | None = None


def has_categories(deployment: Deployment) -> bool:
    """Whether any of the deployment's features is a category (a string for the model); a
    deployment without is built without the one-hot branch (``ModelSpec.build``)."""
    return any(f.kind == "category" for f in deployment.features)


class OnlineModel:
    """A deployment's river estimator, with the bookkeeping of what it has learned."""

    def __init__(self, deployment: Deployment, spec: ModelSpec, estimator: base.Estimator,
                 version: int = 0, samples_learned: int = 0) -> None:
        self.deployment = deployment
        self.spec = spec
        self.estimator = estimator
        self.version = version
        self.samples_learned = samples_learned
        # the estimator the fused step was made for, and that step (None: river's own calls)
        self._fused: tuple[base.Estimator, Step | None] | None = None

    @classmethod
    def fresh(cls, deployment: Deployment) -> OnlineModel:
        spec = get_model(deployment.model)
        return cls(deployment, spec, spec.build(categories=has_categories(deployment)))

    def features(self, row: Mapping[str, Any], commit_us: int | None = None
                 ) -> dict[str, float | str]:
        """The row's features; a row committed at ``commit_us`` without one of the columns
        raises :class:`MissingColumn` when the definition says it must have them all."""
        return build_features(row, self.deployment.features,
                              self.deployment.rows_have_columns_at(commit_us))

    def label(self, row: Mapping[str, Any], commit_us: int | None = None) -> Any:
        """The row's target as the model's task wants it, or None when not yet known (NULL);
        :class:`MissingColumn` as :meth:`features` says."""
        value = row.get(self.deployment.target)
        if value is None:
            if self.deployment.target not in row \
                    and self.deployment.rows_have_columns_at(commit_us):
                raise MissingColumn(self.deployment.target)
            return None
        return self.label_value(value)

    def label_value(self, value: Any) -> Any:
        """A label value (from the row, an update or a labels table) as the task wants it."""
        target = self.deployment.target
        if self.spec.task == "regression":
            y = as_number(target, value)
            if not -LABEL_LIMIT <= y <= LABEL_LIMIT:
                raise FeatureError(target, value, f"a regression label beyond ±{LABEL_LIMIT:g} "
                                   "cannot be learned: its squared error overflows a float")
            return y
        if self.spec.task == "binary":
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float) and value in (0, 1):
                return bool(value)
            raise FeatureError(target, value, "a binary target must be boolean or 0/1")
        if isinstance(value, dict | list):
            raise FeatureError(target, value, "a class label must be text, a number or boolean")
        return value if isinstance(value, str | int | bool) else str(value)

    def score(self, x: Mapping[str, float | str]) -> Score:
        task = self.spec.task
        if task == "regression":
            y = float(self.estimator.predict_one(x))
            return Score(y, y)
        if task == "anomaly":
            return Score(None, float(self.estimator.score_one(x)))
        return self._from_proba(self.estimator.predict_proba_one(x))

    def _from_proba(self, proba: dict[Any, float]) -> Score:
        # the label is river's own choice (max of proba, first on ties), so accuracy matches
        # river.evaluate.progressive_val_score exactly
        label = max(proba, key=proba.get) if proba else None
        if self.spec.task == "binary" or (proba and all(type(c) is bool for c in proba)):
            # a classifier of any labels learning a boolean target says P(True) too: swapping
            # models on one table must not flip what ``WHERE score > 0.9`` selects
            return Score(label, float(proba.get(True, 0.0)), proba)
        return Score(label, float(proba[label]) if proba else None, proba)

    def score_many(self, xs: Sequence[Mapping[str, float | str]]) -> list[Score | Exception]:
        """:meth:`score` for each row, all with the current state: at once for the catalog's
        linear and logistic pipelines (:mod:`rowcast.models.batch_scoring`, bit-for-bit
        river's answer), row by row otherwise. A row the model raises on gets its exception
        in its place, so one row's failure costs that row alone."""
        task = self.spec.task
        answers: list[Any] = [None] * len(xs)
        if task in ("regression", "binary") and len(xs) > 1:
            try:
                plan = linear_plan(self.estimator)
                if plan is not None and plan.binary == (task == "binary"):
                    answers = plan.predict_many(xs)
            except Exception:  # e.g. a custom loss overflowing: river says it row by row
                answers = [None] * len(xs)
        out: list[Score | Exception] = []
        for x, answer in zip(xs, answers, strict=True):
            if answer is None:
                try:
                    out.append(self.score(x))
                except Exception as exc:
                    out.append(exc)
            elif task == "regression":
                y = float(answer)
                out.append(Score(y, y))
            else:
                out.append(self._from_proba(answer))
        return out

    def score_then_learn(self, x: Mapping[str, float | str], y: Any) -> Score:
        """:meth:`score`, then :meth:`learn` the row with its label: progressive validation's
        step. In one pass for the catalog's linear and logistic regression, bit for bit
        river's (:mod:`rowcast.models.fused_learning`); by river's own calls otherwise.

        >>> from rowcast.models.deployment import Deployment, Feature
        >>> d = Deployment("s", "public", "c", "y", (Feature("x", "number"),), "linear_regression", ("id",))
        >>> m = OnlineModel.fresh(d)
        >>> [m.score_then_learn({"x": 1.0}, 2.0).score, m.score({"x": 1.0}).score, m.samples_learned]
        [0.0, 0.04, 1]
        """
        fused = self._fused
        if fused is None or fused[0] is not self.estimator:  # a new or restored estimator
            step = score_then_learn(self.estimator) if self.spec.task in (
                "regression", "binary") else None
            fused = self._fused = (self.estimator, step)
        if fused[1] is not None:
            answer = fused[1](x, y)  # river's predict_one, or predict_proba_one
            if answer is not None:
                self.samples_learned += 1
                if self.spec.task == "regression":
                    return Score(float(answer), float(answer))
                return self._from_proba(answer)
        scored = self.score(x)
        self.learn(x, y)
        return scored

    def learn(self, x: Mapping[str, float | str], y: Any) -> None:
        if self.spec.task == "anomaly":
            self.estimator.learn_one(x)
        else:
            self.estimator.learn_one(x, y)
        self.samples_learned += 1
