"""Score a labelled row, then learn it, in one pass for the catalog's linear and logistic
regression on numbers only: river's arithmetic on river's own state, without river's per-call
machinery.

Why: the learner scores each labelled row before learning it (progressive validation). For
``StandardScaler() | LinearRegression()`` (``linear_regression`` on a table whose features are
all numbers, :func:`rowcast.models.catalog.without_categories`; ``logistic_regression`` alike)
river does that through ``Pipeline.predict_one`` (``predict_proba_one``) and ``learn_one``:
the scaler's transform twice, a ``VectorDict`` put in and out of learn mode, a gradient
``VectorDict``, the optimizer's type checks. That was 7.4 µs of the 15.9 µs per label
``make bench-learner`` measured for the linear one, and the learner's CPU per label is what
caps the labels learned per second end to end (issue 15). Written out: 4 µs less per label.

How: :func:`score_then_learn` returns a function of ``(x, y)`` that does *the same
floating-point operations in the same order on the same attributes* as river's
``predict_one`` then ``learn_one`` (``StandardScaler.transform_one``/``learn_one``,
``GLM._raw_dot_one``, ``Squared.gradient`` or ``utils.math.sigmoid`` and ``Log.gradient``
with its class weights, ``utils.math.clamp``, the intercept's constant rate, ``SGD``'s
``w - lr * g`` per feature in the row's order), and returns river's answer (the class
probabilities for the logistic one). So the model's state and every score are bit for bit
river's, which the snapshot, the scorers and ``make test``'s commit-order equality with river
rely on. Like the fused metrics of :mod:`rowcast.models.progressive`, it is trusted only after
it matched river's own pipelines bit for bit on :data:`_CHECK` (huge, tiny, zero, NaN and
missing values; intercepts at the ends of the sigmoid) in this process: a river release that
changes these classes falls back to river itself.

Recognised: exactly those pipelines of river's own classes (a subclass may override
anything), the scaler with ``with_std`` and no window, the regression with ``SGD`` at a
constant rate, its default loss (squared; logistic), no L1/L2 penalty, a constant intercept
rate and zero-initialised weights. A row with a value that is not a ``float``, or any row
inside river's ``compose.learn_during_predict()``, gets None and nothing learned: the caller
asks river.

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LinearRegression()
>>> step = score_then_learn(model)
>>> [step({"a": 1.0, "b": 2.0}, 3.0), step({"a": 2.0, "b": 0.5}, 1.0)]
[0.0, 0.06]
>>> ours = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> theirs, step = ours.clone(), score_then_learn(ours)
>>> for x, y in [({"a": 1.0}, True), ({"a": 3.0}, False), ({"a": -2.0}, True)]:
...     assert step(x, y) == theirs.predict_proba_one(x)
...     theirs.learn_one(x, y)
>>> ours["LogisticRegression"].weights == theirs["LogisticRegression"].weights
True
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


_LOSSES = {linear_model.LinearRegression: optim.losses.Squared,
           linear_model.LogisticRegression: optim.losses.Log}


def _parts(estimator: Any) -> tuple[Any, Any] | None:
    if type(estimator) is not compose.Pipeline or len(estimator.steps) != 2:
        return None
    scaler, glm = estimator.steps.values()
    if type(scaler) is not preprocessing.StandardScaler or not scaler.with_std \
            or getattr(scaler, "window_size", None) is not None:
        return None
    loss = _LOSSES.get(type(glm))
    if loss is None or type(glm.loss) is not loss or type(glm.optimizer) is not optim.SGD \
            or type(glm.optimizer.lr) is not optim.schedulers.Constant \
            or type(glm.intercept_lr) is not optim.schedulers.Constant \
            or type(glm.initializer) is not optim.initializers.Zeros or glm.l1 != 0 or glm.l2 != 0:
        return None
    return scaler, glm


def _step(estimator: Any) -> Step:
    scaler, glm = estimator.steps.values()
    counts, means, variances = scaler.counts, scaler.means, scaler.vars
    lr = glm.optimizer.lr.learning_rate
    intercept_lr = glm.intercept_lr.learning_rate
    clip = glm.clip_gradient
    optimizer = glm.optimizer
    logistic = type(glm) is linear_model.LogisticRegression
    weight_pos, weight_neg = (glm.loss.weight_pos, glm.loss.weight_neg) if logistic else (1, 1)
    exp = math.exp
    pipeline = compose.Pipeline

    def step(x: Mapping[str, Any], y: Any) -> Any:
        if pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:  # inside compose.learn_during_predict()
            return None  # the scaler would learn in predict_one, and not in learn_one
        for xi in x.values():
            if type(xi) is not float:
                return None  # river's to learn: what it does with other types is its own
        weights = glm._weights
        intercept = glm.intercept
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
        raw += intercept
        predicted += intercept
        if logistic:
            # LogisticRegression.predict_proba_one: utils.math.sigmoid (ints at the ends)
            p = 0 if predicted < -30 else 1 if predicted > 30 else 1 / (1 + exp(-predicted))
            answer: Any = {False: 1.0 - p, True: p}
            # Log.gradient
            weight = weight_pos
            if y == 0:
                sign = -1
                weight = weight_neg
            else:
                sign = int(y)
            z = raw * sign
            if z > 18.0:
                gradient = weight * exp(-z) * -sign
            elif z < -18.0:
                gradient = weight * -sign
            else:
                gradient = weight * -sign / (exp(z) + 1.0)
        else:
            answer = predicted  # Squared.mean_func
            gradient = 2 * (raw - y)  # Squared.gradient
        gradient *= 1.0  # the sample weight
        gradient = float(max(min(gradient, clip), -clip))  # utils.math.clamp
        glm.intercept = intercept - intercept_lr * gradient
        for i, wi, t in steps:
            weights[i] = wi - lr * (t * gradient)  # VectorDict.isub_scaled of from_scaled
        optimizer.n_iterations += 1
        return answer

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
        return all(_matches(make) for make in _LOSSES)
    except Exception:  # e.g. an attribute renamed by a river release: river's own pipeline
        return False


def _matches(make: Any) -> bool:
    """:data:`_CHECK` on a fresh model, again on one fitted on clean rows, then with the
    intercept forced near and beyond the ends of river's sigmoid and log-loss branches."""
    logistic = make is linear_model.LogisticRegression
    rows = [(x, y > 0.5 if logistic else y) for x, y in _CHECK]
    ours, theirs = preprocessing.StandardScaler() | make(), preprocessing.StandardScaler() | make()
    phases: list[float | None] = [None, None, 40.0, -40.0, 25.0, -25.0, 0.0]
    for phase, intercept in enumerate(phases):
        if phase == 1:
            ours, theirs = _fitted(ours, logistic), _fitted(theirs, logistic)
        if intercept is not None:
            ours.steps[list(ours.steps)[1]].intercept = intercept
            theirs.steps[list(theirs.steps)[1]].intercept = intercept
        step = _step(ours)
        for x, y in rows:
            answer = step(dict(x), y)
            expected = (theirs.predict_proba_one if logistic else theirs.predict_one)(dict(x))
            theirs.learn_one(dict(x), y)
            if answer is None or _bits(answer) != _bits(expected) \
                    or _state(ours) != _state(theirs):
                return False
    return True


def _fitted(model: Any, logistic: bool) -> Any:
    """A model that learned a few clean rows, so the check also runs on finite weights."""
    model = model.clone()
    for i in range(20):
        model.learn_one({"a": float(i), "b": i * 0.5 - 3.0, "c": 7.0}, i % 3 == 0 if logistic
                        else i * 1.5)
    return model


def _bits(value: Any) -> Any:
    return value.hex() if isinstance(value, float) else repr(value)


def _state(model: Any) -> list[Any]:
    scaler, glm = model.steps.values()
    dicts = (scaler.counts, scaler.means, scaler.vars, glm._weights.to_dict())
    return [[(k, _bits(v)) for k, v in d.items()] for d in dicts] + [
        _bits(glm.intercept), glm.optimizer.n_iterations]
