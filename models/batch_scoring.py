"""Score many rows of a linear or logistic catalog model at once, equal to river's own answer.

Why: a worker scores a change batch of hundreds of rows with one model state (scorers never
learn), and river's ``predict_one`` through the catalog pipeline (type selection, scaling, a
one-hot dict holding a zero for every category ever seen, a union, then the dot product) costs
several µs per row, most of it rebuilding per row what does not change within a batch. River's
``predict_many`` cannot help: ``SelectType`` has no ``transform_many``.

How: :func:`linear_plan` reads the river state once per batch (weights, intercept, the scaler's
means and variances, the encoder's categories and their order) and :meth:`LinearPlan.raw_many`
then computes each row's raw score with the *same floating-point operations in the same order*
as river: ``StandardScaler.transform_one`` gives ``(x - mean) / var ** 0.5`` (0.0 where the
variance is 0), the union puts the one-hot part first (its transformers are applied in reverse),
the one-hot part lists the categories in the order the encoder learned them with unseen ones
last, and river's ``VectorDict.dot`` sums ``weight * value`` left to right over that dict before
adding the intercept. Terms that are exactly zero (an absent category, a feature without
variance) are skipped, which changes nothing since every weight is finite. The result is
therefore bit-for-bit river's (tests/unit/test_batch_scoring.py checks it on random rows, huge
and tiny values, NULLs and unseen categories), not merely close.

Only the exact catalog shapes are recognised (``preprocessing_stage() | LinearRegression()`` or
``| LogisticRegression()``, and ``StandardScaler() | ...`` as a deployment without category
features gets it, see :mod:`rowcast.models.catalog`), river's own classes and not
subclasses (a user's subclass may override ``predict_one``). Anything else, a non-finite weight,
or a row this plan cannot replicate exactly (a value that is neither ``float`` nor ``str``, a
one-hot name colliding with another feature) is scored row by row with river, as before.

No numpy: the feature dicts are Python dicts that the label events carry anyway; turning them
into arrays costs the same Python work per value as the plain loop, which is exact besides.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from river import compose, linear_model, optim, preprocessing

_FALLBACK = None  # a row raw_many cannot replicate exactly: the caller asks river


def _is_part(step: Any, types: tuple[type, ...], last: type) -> Any:
    """The transformer after ``SelectType(types)`` in a two-step pipeline of that shape."""
    if type(step) is not compose.Pipeline or len(step.steps) != 2:
        return None
    select, transformer = step.steps.values()
    if type(select) is not compose.SelectType or tuple(select.types) != types \
            or type(transformer) is not last:
        return None
    return transformer


class LinearPlan:
    """One batch's view of a linear model's state, for :meth:`raw_many` (see the module)."""

    __slots__ = ("weights", "intercept", "positions", "numeric", "categories_first",
                 "mean_func", "binary", "encodes")

    def __init__(self, weights: dict[Any, float], intercept: float, positions: dict[Any, int],
                 numeric: dict[Any, tuple[float, float, float]], categories_first: bool,
                 mean_func: Any, binary: bool, encodes: bool = True) -> None:
        self.weights = weights
        self.intercept = intercept
        self.positions = positions  # one-hot name -> its place in the encoder's zero dict
        self.numeric = numeric  # feature -> (mean, std, weight), for variance != 0 only
        self.categories_first = categories_first
        self.mean_func = mean_func
        self.binary = binary
        self.encodes = encodes  # False: no one-hot branch (a string is river's to refuse)

    def raw_many(self, xs: Sequence[Mapping[str, Any]]) -> list[float | None]:
        """Each row's ``weights · transformed(x) + intercept``, or None where river must say."""
        weights, positions, numeric = self.weights, self.positions, self.numeric
        categories_first, intercept, encodes = self.categories_first, self.intercept, self.encodes
        out: list[float | None] = []
        append = out.append
        for x in xs:
            hot: list[str] = []
            exact = True
            for name, value in x.items():
                kind = type(value)
                if kind is str:
                    hot.append(f"{name}_{value}")
                elif kind is not float:
                    exact = False
                    break
            if exact and hot:
                if not encodes:
                    exact = False
                elif len(hot) > 1:
                    if len(set(hot)) != len(hot):
                        exact = False
                    else:  # known categories in the encoder's order, unseen ones after
                        unseen = len(positions)
                        hot.sort(key=lambda k: positions.get(k, unseen))
                for k in hot:
                    if k in x:  # a one-hot name equal to a feature name: the union merges
                        exact = False
            if not exact:
                append(_FALLBACK)
                continue
            s = 0.0
            if categories_first:
                for k in hot:
                    s += weights.get(k, 0.0)
            for name, value in x.items():
                term = numeric.get(name)
                if term is not None and type(value) is float:
                    s += term[2] * ((value - term[0]) / term[1])
            if not categories_first:
                for k in hot:
                    s += weights.get(k, 0.0)
            append(s + intercept)
        return out

    def predict_many(self, xs: Sequence[Mapping[str, Any]]) -> list[Any]:
        """What river's ``predict_one`` (regression) or ``predict_proba_one`` (binary) returns
        for each row, or None where the caller must ask river itself."""
        mean_func, binary = self.mean_func, self.binary
        out: list[Any] = []
        for raw in self.raw_many(xs):
            if raw is None:
                out.append(None)
            elif binary:
                p = mean_func(raw)
                out.append({False: 1.0 - p, True: p})
            else:
                out.append(mean_func(raw))
        return out


def linear_plan(estimator: Any) -> LinearPlan | None:
    """A plan for ``estimator`` as it is now, or None when it is not a catalog linear or
    logistic pipeline whose answers the plan reproduces exactly."""
    if type(estimator) is not compose.Pipeline or len(estimator.steps) != 2 \
            or compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
        return None
    first, last = estimator.steps.values()
    if type(last) not in (linear_model.LinearRegression, linear_model.LogisticRegression) \
            or type(last.initializer) is not optim.initializers.Zeros:
        return None
    if type(first) is preprocessing.StandardScaler:  # numbers only (catalog.without_categories)
        scaler, encoder, categories_first = first, None, False
    elif type(first) is compose.TransformerUnion and len(first.transformers) == 2:
        order = list(reversed(first.transformers.values()))  # as TransformerUnion.transform_one
        scalers = [_is_part(t, (numbers.Number,), preprocessing.StandardScaler) for t in order]
        encoders = [_is_part(t, (str,), preprocessing.OneHotEncoder) for t in order]
        if sorted(i for i, s in enumerate(scalers) if s is not None) \
                + sorted(i for i, e in enumerate(encoders) if e is not None) not in ([0, 1], [1, 0]):
            return None
        scaler = next(s for s in scalers if s is not None)
        encoder = next(e for e in encoders if e is not None)
        categories_first = encoders[0] is not None
        if encoder.categories is not None or encoder.drop_zeros or encoder.drop_first:
            return None
    else:
        return None
    if not scaler.with_std or scaler.window_size is not None:
        return None
    weights = last._weights.to_dict()
    intercept = last.intercept
    if not isinstance(intercept, float | int) or not math.isfinite(intercept) \
            or not all(math.isfinite(w) for w in weights.values()):
        return None
    numeric: dict[Any, tuple[float, float, float]] = {}
    for name, var in scaler.vars.items():
        if not isinstance(var, float | int) or var < 0:
            return None
        if var:
            numeric[name] = (scaler.means.get(name, 0.0), var**0.5, weights.get(name, 0.0))
    positions = {} if encoder is None else {name: i for i, name in enumerate(encoder._zero_dict)}
    if not positions.keys().isdisjoint(numeric):  # the union would merge them in its own order
        return None
    return LinearPlan(weights, intercept, positions, numeric, categories_first,
                      last.loss.mean_func, type(last) is linear_model.LogisticRegression,
                      encodes=encoder is not None)
