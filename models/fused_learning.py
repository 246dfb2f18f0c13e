"""Score a labelled row, then learn it, in one pass for the catalog's numbers-only linear
regression: river's arithmetic on river's own state, without river's per-call machinery.

Why: the learner scores each labelled row before learning it (progressive validation). For
``StandardScaler() | LinearRegression()`` (``linear_regression`` on a table whose features are
all numbers, :func:`rowcast.models.catalog.without_categories`) river does that through
``Pipeline.predict_one`` and ``learn_one``: the scaler's transform twice, a ``VectorDict`` put
in and out of learn mode, a gradient ``VectorDict``, the optimizer's type checks. That was
7.4 µs of the 15.9 µs per label ``make bench-learner`` measured, and the learner's CPU per
label is what caps the labels learned per second end to end (issue 15). Written out, the same
row costs about 3 µs less.

How: :func:`score_then_learn` returns a function of ``(x, y)`` that does *the same
floating-point operations in the same order on the same attributes* as river's
``predict_one`` then ``learn_one`` (``StandardScaler.transform_one``/``learn_one``,
``GLM._raw_dot_one``, ``Squared.gradient``, ``utils.math.clamp``, the intercept's constant
rate, ``SGD``'s ``w - lr * g`` per feature in the row's order), and returns river's
prediction. So the model's state and every score are bit for bit river's, which the snapshot,
the scorers and ``make test``'s commit-order equality with river rely on. Like the fused
metrics of :mod:`rowcast.models.progressive`, it is trusted only after it matched river's own
pipeline bit for bit on :data:`_CHECK` (huge, tiny, zero, NaN and missing values) in this
process: a river release that changes these classes falls back to river itself.

Recognised: exactly that pipeline of river's own classes (a subclass may override anything),
the scaler with ``with_std`` and no window, the regression with ``SGD`` at a constant rate, the
squared loss, no L1/L2 penalty, a constant intercept rate and zero-initialised weights. A row
with a value that is not a ``float`` gets None and nothing learned: the caller asks river.

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LinearRegression()
>>> step = score_then_learn(model)
>>> [step({"a": 1.0, "b": 2.0}, 3.0), step({"a": 2.0, "b": 0.5}, 1.0)]
[0.0, 0.06]
>>> score_then_learn(linear_model.LinearRegression()) is None  # not the catalog's shape
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from river import compose, linear_model, optim, preprocessing

Step = Callable[[Mapping[str, Any], Any], float | None]


def score_then_learn(estimator: Any) -> Step | None:
    """The fused step for ``estimator`` (bound to its state), or None when it is not the
    recognised shape or the written-out arithmetic did not match river's here."""
    if _parts(estimator) is None or not _trusted():
        return None
    return _step(estimator)


def _parts(estimator: Any) -> tuple[Any, Any] | None:
    if type(estimator) is not compose.Pipeline or len(estimator.steps) != 2:
        return None
    scaler, lin = estimator.steps.values()
    if type(scaler) is not preprocessing.StandardScaler or not scaler.with_std \
            or getattr(scaler, "window_size", None) is not None:
        return None
    if type(lin) is not linear_model.LinearRegression or type(lin.loss) is not optim.losses.Squared \
            or type(lin.optimizer) is not optim.SGD \
            or type(lin.optimizer.lr) is not optim.schedulers.Constant \
            or type(lin.intercept_lr) is not optim.schedulers.Constant \
            or type(lin.initializer) is not optim.initializers.Zeros or lin.l1 != 0 or lin.l2 != 0:
        return None
    return scaler, lin


def _step(estimator: Any) -> Step:
    scaler, lin = estimator.steps.values()
    counts, means, variances = scaler.counts, scaler.means, scaler.vars
    lr = lin.optimizer.lr.learning_rate
    intercept_lr = lin.intercept_lr.learning_rate
    clip = lin.clip_gradient
    optimizer = lin.optimizer

    def step(x: Mapping[str, Any], y: Any) -> float | None:
        for xi in x.values():
            if type(xi) is not float:
                return None  # river's to learn: what it does with other types is its own
        weights = lin._weights
        intercept = lin.intercept
        predicted = raw = 0.0
        steps = []
        for i, xi in x.items():
            wi = weights.get(i, 0.0)  # a feature never learned weighs 0.0
            # predict_one: StandardScaler.transform_one (defaultdicts: a new feature gets a
            # 0.0 mean and variance, as river's lookups give it), VectorDict.dot left to right
            v = variances[i]
            m = means[i]
            predicted += wi * ((xi - m) / v**0.5 if v else 0.0)
            # learn_one: the scaler learns (Welford) and transforms again; features do not
            # interact there, so each is done in one go
            c = counts[i] + 1
            counts[i] = c
            mean = means[i] = m + (xi - m) / c
            v = variances[i] = v + ((xi - m) * (xi - mean) - v) / c
            t = (xi - mean) / v**0.5 if v else 0.0
            raw += wi * t
            steps.append((i, wi, t))
        gradient = 2 * ((raw + intercept) - y)  # Squared.gradient
        gradient *= 1.0  # the sample weight
        gradient = float(max(min(gradient, clip), -clip))  # utils.math.clamp
        lin.intercept = intercept - intercept_lr * gradient
        for i, wi, t in steps:
            weights[i] = wi - lr * (t * gradient)  # VectorDict.isub_scaled of from_scaled
        optimizer.n_iterations += 1
        return predicted + intercept

    return step


# rows the written-out step must follow bit for bit before it is trusted: features appearing
# late and missing, a constant (zero-variance) feature, huge and tiny magnitudes, -0.0, NaN
_CHECK: tuple[tuple[dict[str, float], float], ...] = (
    ({"a": 1.0, "b": 2.0}, 3.0), ({"a": 2.0, "b": 0.5, "c": 7.0}, 1.0), ({"b": -3.5}, -2.0),
    ({"c": 7.0, "a": 1e150, "b": 1e-300}, 4.0), ({"a": -0.0, "b": 0.1, "c": 7.0}, 0.5),
    ({"a": 3.0, "b": 1e6, "c": 7.0}, 1e6), ({"a": 2.5, "b": -1e-9}, -1e3),
    ({"a": math.nan, "b": 1.0}, 2.0), ({"a": 1.0, "b": 1.0, "c": 1.0}, math.nan),
)
_TRUSTED: list[bool] = []


def _trusted() -> bool:
    if not _TRUSTED:
        _TRUSTED.append(_matches_river())
    return _TRUSTED[0]


def _matches_river() -> bool:
    try:
        ours = preprocessing.StandardScaler() | linear_model.LinearRegression()
        theirs = preprocessing.StandardScaler() | linear_model.LinearRegression()
        step = _step(ours)
        for n, (x, y) in enumerate(_CHECK * 3):
            if n == len(_CHECK):  # again on a fitted state, the NaN rows now behind it
                ours, theirs = _fitted(ours), _fitted(theirs)
                step = _step(ours)
            predicted = step(dict(x), y)
            if predicted is None:
                return False
            expected = theirs.predict_one(dict(x))
            theirs.learn_one(dict(x), y)
            if _bits(predicted) != _bits(expected) or _state(ours) != _state(theirs):
                return False
        return True
    except Exception:  # e.g. an attribute renamed by a river release: river's own pipeline
        return False


def _fitted(model: Any) -> Any:
    """A model that learned a few clean rows, so the check also runs on finite weights."""
    model = model.clone()
    for i in range(20):
        model.learn_one({"a": float(i), "b": i * 0.5 - 3.0, "c": 7.0}, i * 1.5)
    return model


def _bits(value: Any) -> Any:
    return value.hex() if isinstance(value, float) else repr(value)


def _state(model: Any) -> list[Any]:
    scaler, lin = model.steps.values()
    dicts = (scaler.counts, scaler.means, scaler.vars, lin._weights.to_dict())
    return [[(k, _bits(v)) for k, v in d.items()] for d in dicts] + [
        _bits(lin.intercept), lin.optimizer.n_iterations]
