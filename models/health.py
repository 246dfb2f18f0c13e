"""Is a model fit to be checkpointed and published? Nothing non-finite may be.

Finite but huge inputs (a feature of 1e300, which the scorer now refuses beyond 1e50, or one a
custom model cubes) overflow a scaler's running variance to ``inf``;
from then on every prediction of the model is NaN, forever, and progressive metrics follow.
Such a model must never reach the scorers: :func:`problem` names the first non-finite number
(or one whose square overflows: a mean of 1e300 is finite until the next ordinary row) in the
estimator's state (a walk over its attributes, dicts, river's ``VectorDict`` and numpy
arrays), in the model's answer for the last row it learned, or in the running metrics, and
the learner refuses to checkpoint a model for which it returns a reason. The state walk stops
after ``MAX_VISITS`` objects (a forest of deep trees is checked in part: its answer and
metrics still are, and an overflowed forest answers NaN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rowcast.models.progressive import OnlineMetrics
from rowcast.models.scoring import OnlineModel

MAX_VISITS = 20_000  # bounds the walk (~10 ms) on large models: forests are checked in part
# a number beyond this overflows when squared (sqrt of the largest float): a running mean of
# 1e300 is finite, but the next ordinary row makes the variance inf. Such a state is refused
# with the row that put it there, not with every ordinary row after it (a first label of 1e300
# used to leave a model that refused everything, for good)
SQUARE_LIMIT = math.sqrt(2.0 ** 1023)


def non_finite_state(obj: Any, where: str = "estimator") -> str | None:
    """The path of the first float reachable from ``obj`` that is not finite, or whose square
    overflows (:data:`SQUARE_LIMIT`), or None.

    >>> non_finite_state({"mean": 2.0, "var": 1e150})
    >>> non_finite_state({"mean": 1e300})
    "estimator['mean'] = 1e+300 (its square overflows)"
    >>> non_finite_state([1.0, float("nan")])
    'estimator[1] = nan'
    """
    seen: set[int] = set()
    stack: list[tuple[Any, str]] = [(obj, where)]
    visits = 0
    while stack and visits < MAX_VISITS:
        value, path = stack.pop()
        visits += 1
        if isinstance(value, float):
            if not math.isfinite(value):
                return f"{path} = {value}"
            if abs(value) > SQUARE_LIMIT:
                return f"{path} = {value} (its square overflows)"
            continue
        if value is None or isinstance(value, bool | int | str | bytes | type):
            continue
        if id(value) in seen:
            continue
        seen.add(id(value))
        if type(value).__module__ == "numpy":
            if getattr(value, "dtype", None) is not None and value.dtype.kind in "fc":
                import numpy

                if not numpy.isfinite(value).all():
                    return f"{path} (array)"
                if value.size and float(numpy.abs(value).max()) > SQUARE_LIMIT:
                    return f"{path} (array; a square overflows)"
            continue
        if isinstance(value, Mapping) or (not hasattr(value, "__dict__")
                                          and callable(getattr(value, "items", None))):
            try:
                items = list(value.items())
            except TypeError:
                continue
            stack.extend((v, f"{path}[{k!r}]") for k, v in items)
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif hasattr(value, "__dict__"):
            stack.extend((v, f"{path}.{k}") for k, v in vars(value).items())
    return None


def _non_finite_answer(model: OnlineModel, x: Mapping[str, float | str]) -> str | None:
    scored = model.score(x)
    for name, value in (("prediction", scored.prediction), ("score", scored.score),
                        *(("proba", p) for p in (scored.proba or {}).values())):
        if isinstance(value, float) and not math.isfinite(value):
            return f"its {name} for the last row it learned is {value}"
    return None


def problem(model: OnlineModel, last_x: Mapping[str, float | str] | None,
            *metrics: OnlineMetrics) -> str | None:
    """Why ``model`` (with its running ``metrics``) must not be published, or None."""
    where = non_finite_state(model.estimator)
    if where is not None:
        return f"non-finite model state: {where}"
    if last_x is not None:
        try:
            answer = _non_finite_answer(model, last_x)
        except (ArithmeticError, ValueError) as exc:  # e.g. math.exp overflowing
            answer = f"scoring the last row it learned fails: {exc}"
        if answer is not None:
            return f"non-finite model: {answer}"
    for running in metrics:
        for name, value in running.values().items():
            if not math.isfinite(value):
                return f"non-finite metric {name} = {value}"
    return None
