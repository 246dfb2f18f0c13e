"""Score a labelled row, then learn it, in one pass for the catalog's linear and logistic
regression, with or without text features: river's arithmetic on river's own state, without
river's per-call machinery.

Why: the learner scores each labelled row before learning it (progressive validation). For
``StandardScaler() | LinearRegression()`` (``linear_regression`` on a table whose features are
all numbers, :func:`rowcast.models.catalog.without_categories`; ``logistic_regression`` alike)
river does that through ``Pipeline.predict_one`` (``predict_proba_one``) and ``learn_one``:
the scaler's transform twice, a ``VectorDict`` put in and out of learn mode, a gradient
``VectorDict``, the optimizer's type checks. That was 7.4 µs of the 15.9 µs per label
``make bench-learner`` measured for the linear one, and the learner's CPU per label is what
caps the labels learned per second end to end (issue 15). Written out: 4 µs less per label.
With text features (:func:`rowcast.models.catalog.preprocessing_stage`) river also goes
through a type selection, a union and a one-hot dict holding a 0 for every category ever seen
(:func:`_step_with_categories`): 38 µs per label, 15.8 written out.

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
anything): ``StandardScaler() | GLM`` or ``preprocessing_stage() | GLM`` (its one-hot encoder
without fixed categories, dropped zeros or a dropped first), the scaler with ``with_std`` and
no window, the regression with ``SGD`` at a
constant rate, its default loss (squared; logistic), no L1/L2 penalty, a constant intercept
rate and zero-initialised weights and a finite learning rate. A row with a value that is
neither a ``float`` nor (with text features) a ``str``, or any row inside river's
``compose.learn_during_predict()``, gets None and nothing learned: the caller asks river.

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
import numbers
import random
from collections.abc import Callable, Mapping
from typing import Any

from river import compose, linear_model, optim, preprocessing

from rowcast.models.catalog import preprocessing_stage

Step = Callable[[Mapping[str, Any], Any], float | None]


def score_then_learn(estimator: Any) -> Step | None:
    """The fused step for ``estimator`` (bound to its state), or None when it is not the
    recognised shape or the written-out arithmetic did not match river's here."""
    parts = _parts(estimator)
    if parts is None or not _trusted():
        return None
    return _step(*parts)


_LOSSES = {linear_model.LinearRegression: optim.losses.Squared,
           linear_model.LogisticRegression: optim.losses.Log}


def _parts(estimator: Any) -> tuple[Any, Any, Any] | None:
    """(scaler, one-hot encoder or None, regression) of a recognised pipeline."""
    if type(estimator) is not compose.Pipeline or len(estimator.steps) != 2:
        return None
    first, glm = estimator.steps.values()
    encoder = None
    if type(first) is compose.TransformerUnion:  # catalog.preprocessing_stage(), categories
        scaler, encoder = _union_parts(first)
    else:
        scaler = first
    if type(scaler) is not preprocessing.StandardScaler or not scaler.with_std \
            or getattr(scaler, "window_size", None) is not None:
        return None
    if encoder is None and type(first) is not preprocessing.StandardScaler:
        return None
    loss = _LOSSES.get(type(glm))
    if loss is None or type(glm.loss) is not loss or type(glm.optimizer) is not optim.SGD \
            or type(glm.optimizer.lr) is not optim.schedulers.Constant \
            or not math.isfinite(glm.optimizer.lr.learning_rate) \
            or type(glm.intercept_lr) is not optim.schedulers.Constant \
            or type(glm.initializer) is not optim.initializers.Zeros or glm.l1 != 0 or glm.l2 != 0:
        return None
    return scaler, encoder, glm


def _union_parts(union: Any) -> tuple[Any, Any]:
    """(scaler, encoder) of ``SelectType(Number) | StandardScaler() + SelectType(str) |
    OneHotEncoder()`` in that order, else (None, None)."""
    parts = list(union.transformers.values())
    if len(parts) != 2 or any(type(p) is not compose.Pipeline or len(p.steps) != 2
                              for p in parts):
        return None, None
    (select_numbers, scaler), (select_strings, encoder) = (p.steps.values() for p in parts)
    if type(select_numbers) is not compose.SelectType \
            or tuple(select_numbers.types) != (numbers.Number,) \
            or type(select_strings) is not compose.SelectType \
            or tuple(select_strings.types) != (str,) \
            or type(encoder) is not preprocessing.OneHotEncoder or encoder.categories is not None \
            or encoder.drop_zeros or encoder.drop_first:
        return None, None
    return scaler, encoder


def _loss(glm: Any) -> Callable[[float, float, Any], tuple[Any, float]]:
    """(river's answer, the clamped loss gradient) from the raw scores before and after the
    scaler learned the row: ``LinearRegression`` with ``Squared``, or ``LogisticRegression``
    (``utils.math.sigmoid``, ints at its ends) with ``Log`` and its class weights."""
    clip = glm.clip_gradient
    exp = math.exp
    if type(glm) is linear_model.LinearRegression:
        def squared(predicted: float, raw: float, y: Any) -> tuple[Any, float]:
            gradient = 2 * (raw - y)  # Squared.gradient
            gradient *= 1.0  # the sample weight
            return predicted, float(max(min(gradient, clip), -clip))  # utils.math.clamp

        return squared
    weight_pos, weight_neg = glm.loss.weight_pos, glm.loss.weight_neg

    def log(predicted: float, raw: float, y: Any) -> tuple[Any, float]:
        p = 0 if predicted < -30 else 1 if predicted > 30 else 1 / (1 + exp(-predicted))
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
        gradient *= 1.0
        return {False: 1.0 - p, True: p}, float(max(min(gradient, clip), -clip))

    return log


def _step(scaler: Any, encoder: Any, glm: Any) -> Step:
    if encoder is not None:
        return _step_with_categories(scaler, encoder, glm)
    lr = glm.optimizer.lr.learning_rate
    intercept_lr = glm.intercept_lr.learning_rate
    optimizer = glm.optimizer
    loss = _loss(glm)
    pipeline = compose.Pipeline

    def step(x: Mapping[str, Any], y: Any) -> Any:
        if pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:  # inside compose.learn_during_predict()
            return None  # the scaler would learn in predict_one, and not in learn_one
        for xi in x.values():
            if type(xi) is not float:
                return None  # river's to learn: what it does with other types is its own
        weights = glm._weights
        intercept = glm.intercept
        predicted, steps = _numbers(x, weights, scaler, 0.0)
        raw = 0.0
        for _, wi, t in steps:
            raw += wi * t
        answer, gradient = loss(predicted + intercept, raw + intercept, y)
        glm.intercept = intercept - intercept_lr * gradient
        for i, wi, t in steps:
            weights[i] = wi - lr * (t * gradient)  # VectorDict.isub_scaled of from_scaled
        optimizer.n_iterations += 1
        return answer

    return step


def _numbers(x: Mapping[str, Any], weights: Any, scaler: Any, predicted: float
             ) -> tuple[float, list[tuple[str, float, float]]]:
    """The row's numbers (its strings skipped): each one's term added to ``predicted`` as
    ``predict_one`` adds it (``StandardScaler.transform_one``: defaultdicts give a new feature
    a 0.0 mean and variance, as river's lookups do; ``VectorDict.dot`` left to right), then
    learned by the scaler (Welford) and transformed again -- features do not interact there,
    so each is done in one go. Returns the sum and, per number, (name, weight, transformed)."""
    counts, means, variances = scaler.counts, scaler.means, scaler.vars
    steps = []
    for i, xi in x.items():
        if type(xi) is str:
            continue
        wi = weights.get(i, 0.0)  # a feature never learned weighs 0.0
        v = variances[i]
        m = means[i]
        predicted += wi * ((xi - m) / v**0.5 if v else 0.0)
        c = counts[i] + 1
        counts[i] = c
        mean = means[i] = m + (xi - m) / c
        v = variances[i] = v + ((xi - m) * (xi - mean) - v) / c
        steps.append((i, wi, (xi - mean) / v**0.5 if v else 0.0))
    return predicted, steps


def _usable(w: Any) -> bool:
    """A weight whose product with a one-hot 0 adds nothing to a sum and whose update by one
    leaves it as it is: finite, and not -0.0 (-0.0 - -0.0 is 0.0)."""
    return math.isfinite(w) and not (w == 0 and math.copysign(1.0, w) < 0)


def _step_with_categories(scaler: Any, encoder: Any, glm: Any) -> Step:
    """The step through ``preprocessing_stage()``: river's one-hot dict holds a 0 for every
    category seen, and its dot products and update go through all of them. A 0 term adds
    nothing to a sum and a 0 gradient leaves a weight as it is, *if* every weight is finite
    and none is -0.0 (checked here once, then on each weight the step changes): so only the
    row's own categories and numbers are computed, in the places river's dict has them (the
    encoder's order, unseen categories after, numbers last). A weight that fails that, a
    gradient that is not finite, a one-hot name that is also a feature's or two features'
    at once: the step does river's whole dict, or steps aside before changing anything."""
    seen, zero = encoder.values, encoder._zero_dict
    lr = glm.optimizer.lr.learning_rate
    intercept_lr = glm.intercept_lr.learning_rate
    optimizer = glm.optimizer
    loss = _loss(glm)
    pipeline = compose.Pipeline
    usable = [False]
    positions: dict[str, int] = {}  # one-hot name -> its place in the encoder's dict
    known: list[Any] = [None, None]  # (optimizer steps, one-hot names) when last looked at

    def look() -> None:
        """After river's own calls changed the model (a row this step left to river, a
        category learned in ``learn_during_predict``): every weight and place again."""
        weights = glm._weights
        usable[0] = all(_usable(w) for w in weights.values()) and all(n in weights for n in zero)
        positions.clear()
        positions.update((name, n) for n, name in enumerate(zero))
        known[:] = optimizer.n_iterations, len(zero)

    def step(x: Mapping[str, Any], y: Any) -> Any:
        if pipeline._LEARN_UNSUPERVISED_DURING_PREDICT:
            return None
        if known[0] != optimizer.n_iterations or known[1] != len(zero):
            look()
        if not usable[0]:
            return None
        hot = []
        for i, xi in x.items():
            kind = type(xi)
            if kind is str:
                hot.append((f"{i}_{xi}", i, xi))
            elif kind is not float:
                return None
        names = {name for name, _, _ in hot}
        if len(names) != len(hot) or any(
                (i in names or i in zero) for i, xi in x.items() if type(xi) is float):
            return None  # the union would merge a one-hot name with a feature's
        in_row = hot
        unseen = len(zero)
        hot = sorted(hot, key=lambda h: positions.get(h[0], unseen))  # unseen: in row order
        weights = glm._weights
        intercept = glm.intercept
        predicted = raw = 0.0
        for name, _, _ in hot:  # before learning: unseen categories are hot, after the rest
            predicted += weights.get(name, 0.0)  # weight * 1
        predicted, steps = _numbers(x, weights, scaler, predicted)
        for _, i, xi in in_row:  # OneHotEncoder.learn_one
            vi = seen[i]
            if xi not in vi:
                vi.add(xi)
                name = f"{i}_{xi}"
                zero[name] = 0  # a name another feature made already keeps its place
                positions.setdefault(name, len(positions))
        hot_weights = [(name, weights.get(name, 0.0)) for name, _, _ in hot]
        for _, w in hot_weights:  # learned: each row's category has its place in the dict
            raw += w
        for _, wi, t in steps:
            raw += wi * t
        answer, gradient = loss(predicted + intercept, raw + intercept, y)
        glm.intercept = intercept - intercept_lr * gradient
        if not math.isfinite(gradient):  # 0 * gradient is NaN: river's whole dict, literally
            usable[0] = False
            for name in zero:
                if name not in names:
                    weights[name] = weights.get(name, 0.0) - lr * (0 * gradient)
        for name, w in hot_weights:
            weights[name] = w = w - lr * (1 * gradient)
            usable[0] = usable[0] and _usable(w)
        for i, wi, t in steps:
            weights[i] = w = wi - lr * (t * gradient)
            usable[0] = usable[0] and _usable(w)
        optimizer.n_iterations += 1
        known[:] = optimizer.n_iterations, len(zero)
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
    intercept forced near and beyond the ends of river's sigmoid and log-loss branches; with
    numbers only, then through the one-hot branch (categories new, seen, two in a row)."""
    return _matches_shape(make, lambda: preprocessing.StandardScaler() | make(), False) \
        and _matches_shape(make, lambda: preprocessing_stage() | make(), True)


def _matches_shape(make: Any, build: Callable[[], Any], categories: bool) -> bool:
    logistic = make is linear_model.LogisticRegression
    rows = [(_with_categories(n, x) if categories and n % 5 else x, y > 0.5 if logistic else y)
            for n, (x, y) in enumerate(_generated(categories) + _CHECK)]
    ours, theirs = build(), build()
    for phase, intercept in enumerate((None, None, 40.0, -40.0, 25.0, -25.0, 0.0)):
        if phase == 1:
            ours, theirs = (_fitted(m, logistic, categories) for m in (ours, theirs))
        if intercept is not None:
            ours.steps[list(ours.steps)[1]].intercept = intercept
            theirs.steps[list(theirs.steps)[1]].intercept = intercept
        parts = _parts(ours)
        if parts is None or (parts[1] is not None) != categories:
            return False
        step = _step(*parts)
        for x, y in rows:
            answer = step(dict(x), y)
            if answer is None:  # stepped aside (a non-finite weight): river's own calls
                if not categories:
                    return False
                answer = (ours.predict_proba_one if logistic else ours.predict_one)(dict(x))
                ours.learn_one(dict(x), y)
            expected = (theirs.predict_proba_one if logistic else theirs.predict_one)(dict(x))
            theirs.learn_one(dict(x), y)
            if _bits(answer) != _bits(expected) or _state(ours) != _state(theirs):
                return False
    return True


_CITIES = ("Lyon", "Oslo", "Lyon", "Lima")


def _generated(categories: bool, n: int = 40) -> tuple[tuple[dict[str, Any], float], ...]:
    """Ordinary rows before the edge cases, the same ones in every process: their sums carry
    enough digits for a term added out of river's order to show."""
    rng = random.Random(20261130)
    rows = []
    for _ in range(n):
        items: list[tuple[str, Any]] = [(k, rng.uniform(-50.0, 50.0)) for k in "abc"]
        if categories:
            items += [(k, rng.choice(("x", "y", "z"))) for k in ("city", "plan", "tier")]
        rng.shuffle(items)
        rows.append((dict(items), rng.uniform(-10.0, 10.0)))
    return tuple(rows)


def _with_categories(n: int, x: dict[str, float]) -> dict[str, Any]:
    """Row ``n`` of the check with categories: new and seen ones, up to three in a row (three
    terms are summed in the encoder's order, not the row's), before or after the numbers."""
    out: dict[str, Any] = {"tier": ("gold", "lead")[n % 2]} if n % 2 else {}
    out.update(x)
    out["city"] = _CITIES[n % 4]
    if n % 3:
        out["plan"] = ("pro", "free")[n % 2]
    if n % 4 == 3:
        out["tier"] = out.pop("tier")  # the row's order is not the encoder's
    return out


def _fitted(model: Any, logistic: bool, categories: bool) -> Any:
    """A model that learned a few clean rows, so the check also runs on finite weights."""
    model = model.clone()
    for i in range(20):
        x: dict[str, Any] = {"a": float(i), "b": i * 0.5 - 3.0, "c": 7.0}
        if categories:
            x["city"] = _CITIES[i % 4]
        model.learn_one(x, i % 3 == 0 if logistic else i * 1.5)
    return model


def _bits(value: Any) -> Any:
    return value.hex() if isinstance(value, float) else repr(value)


def _state(model: Any) -> list[Any]:
    scaler, encoder, glm = _parts(model) or (None, None, None)
    dicts = [scaler.counts, scaler.means, scaler.vars, glm._weights.to_dict()]
    if encoder is not None:
        dicts += [encoder._zero_dict, {k: sorted(v) for k, v in encoder.values.items()}]
    return [[(k, _bits(v)) for k, v in d.items()] for d in dicts] + [
        _bits(glm.intercept), glm.optimizer.n_iterations]
