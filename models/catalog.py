"""Named river pipelines a deployment can pick with ``--model NAME``, or a user's own factory.

Every catalog entry builds a *fresh* estimator whose first stage is the same type-routed
preprocessing: numbers are scaled, strings (categorical columns) are one-hot encoded, missing
features (NULLs) are simply absent from the dict. Keeping that inside the pipeline means scoring
and learning always see the same transformation, and the whole thing pickles as one snapshot.

>>> spec = get_model("linear_regression")
>>> spec.task
'regression'
>>> model = spec.build()
>>> model.predict_one({"age": 30.0, "city": "Lyon"})
0.0

A name with a colon, ``module:factory``, is a user-supplied factory: rowcast imports ``module``,
calls ``factory()`` with no arguments and infers the task from the river estimator it returns
(an anomaly detector, a classifier, multi-class or not, or a regressor; for a pipeline, its last
step). rowcast does *not* wrap it: the feature dicts it sees hold floats for numbers, booleans and
timestamps and strings for categories (see :mod:`rowcast.models.features`), so the factory does its own
preprocessing, e.g. with ``compose.SelectType(str) | preprocessing.OneHotEncoder()``. It must
return a new estimator on every call, and its classes must be importable wherever snapshots are
loaded (snapshots are pickles).

>>> spec = get_model("tests.unit.custom_models:churn")
>>> spec.task, is_custom(spec.name)
('binary', True)
>>> model = spec.build()
>>> model.learn_one({"age": 30.0, "city": "Lyon"}, True)
>>> model.predict_one({"age": 30.0, "city": "Lyon"})
True
>>> get_model("river.linear_model:LinearRegression").task
'regression'
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from rowcast.core.errors import ConfigError


class _Lazy:
    """A river module imported on first use: every process sets up the catalog (its names go
    to ``rowcast.models``), but only the ones that build a model need river's modules --
    ``river.anomaly`` alone loads scipy, ~90 MB of RSS in the source and the sink."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


anomaly, base, compose, forest = (_Lazy(f"river.{m}") for m in ("anomaly", "base", "compose",
                                                                  "forest"))
linear_model, neighbors, preprocessing, tree = (
    _Lazy(f"river.{m}") for m in ("linear_model", "neighbors", "preprocessing", "tree"))

Task = Literal["regression", "binary", "multiclass", "anomaly"]


def preprocessing_stage(scale: bool = True,
                        scaler: Callable[[], base.Transformer] | None = None,
                        ) -> base.Transformer:
    """Numbers (optionally scaled by a fresh ``scaler()``, river's ``StandardScaler`` unless
    given) beside one-hot encoded strings."""
    numeric: base.Transformer = compose.SelectType(numbers.Number)
    if scale:
        numeric = numeric | (scaler or preprocessing.StandardScaler)()
    return numeric + (compose.SelectType(str) | preprocessing.OneHotEncoder())


@dataclass(frozen=True)
class ModelSpec:
    """A catalog entry: what task it solves and how to build a fresh estimator."""

    name: str
    task: Task
    factory: Callable[[], base.Estimator]
    description: str

    def build(self, categories: bool = True) -> base.Estimator:
        """A fresh estimator; ``categories=False`` (a deployment without category features)
        leaves out what only strings go through (see :func:`without_categories`)."""
        estimator = self.factory()
        return estimator if categories else without_categories(estimator)


def without_categories(estimator: base.Estimator) -> base.Estimator:
    """``estimator`` without the type selection and one-hot branch of a leading
    :func:`preprocessing_stage` that has a scaler, for rows that are numbers only.

    Why: with numbers only, the union of ``SelectType(Number) | scaler`` and ``SelectType(str)
    | OneHotEncoder`` gives exactly the scaler's dict, in the same order, so every model
    learns and answers bit for bit the same (``tests/unit/test_lean_pipeline.py``); but river
    ran ``predict_one`` + ``learn_one`` of ``linear_regression`` in 12.7 µs per row through it
    and in 4.5 without it. A stage without scaler is kept: the model would otherwise get the
    caller's own dict rather than a copy. Anything else is returned as it is.

    >>> kinds = lambda e: [type(s).__name__ for s in e.steps.values()]
    >>> kinds(without_categories(preprocessing_stage() | linear_model.LinearRegression()))
    ['StandardScaler', 'LinearRegression']
    >>> kinds(without_categories(preprocessing_stage(scale=False) | linear_model.LinearRegression()))
    ['TransformerUnion', 'LinearRegression']
    """
    if type(estimator) is not compose.Pipeline or len(estimator.steps) < 2:
        return estimator
    first, *rest = estimator.steps.values()
    if type(first) is not compose.TransformerUnion or len(first.transformers) != 2:
        return estimator
    scaler = None
    for part in first.transformers.values():
        if type(part) is not compose.Pipeline or len(part.steps) != 2:
            return estimator
        select, step = part.steps.values()
        if type(select) is not compose.SelectType:
            return estimator
        if tuple(select.types) == (numbers.Number,):
            scaler = step
        elif tuple(select.types) != (str,) or type(step) is not preprocessing.OneHotEncoder:
            return estimator
    return estimator if scaler is None else compose.Pipeline(scaler, *rest)


def _knn_engine() -> neighbors.LazySearch:
    """Exact search over the last 1000 learned rows: memory and time per row stay bounded."""
    return neighbors.LazySearch(window_size=1000)


_SPECS = (
    ModelSpec(
        "linear_regression",
        "regression",
        lambda: preprocessing_stage() | linear_model.LinearRegression(),
        "Standardised linear regression trained by SGD. Pick it first for a numeric target: "
        "the cheapest model (the 1x of the costs below) and a sound baseline.",
    ),
    ModelSpec(
        "logistic_regression",
        "binary",
        lambda: preprocessing_stage() | linear_model.LogisticRegression(),
        "Standardised logistic regression for yes/no targets; scores are P(True). The first pick "
        "for a binary target; about 1.5x the linear cost.",
    ),
    ModelSpec(
        "hoeffding_tree_regressor",
        "regression",
        lambda: preprocessing_stage() | tree.HoeffdingAdaptiveTreeRegressor(seed=42),
        "Hoeffding adaptive tree with linear leaves: for non-linear effects and interactions, "
        "adapts to drift; about 5x the linear cost.",
    ),
    ModelSpec(
        "hoeffding_tree_classifier",
        "multiclass",
        lambda: preprocessing_stage(scale=False)
        | tree.HoeffdingAdaptiveTreeClassifier(seed=42),
        "Hoeffding adaptive tree for two or more classes: non-linear, adapts to drift; "
        "about 3x the linear cost.",
    ),
    ModelSpec(
        "arf_regressor",
        "regression",
        lambda: preprocessing_stage() | forest.ARFRegressor(n_models=10, seed=42),
        "Adaptive random forest of 10 Hoeffding trees: often the most accurate regressor here "
        "and robust to drift, when accuracy matters more than throughput; about 50x the linear "
        "cost.",
    ),
    ModelSpec(
        "arf_classifier",
        "multiclass",
        lambda: preprocessing_stage(scale=False) | forest.ARFClassifier(n_models=10, seed=42),
        "Adaptive random forest of 10 Hoeffding trees for two or more classes: often the most "
        "accurate classifier here and robust to drift; about 40x the linear cost.",
    ),
    ModelSpec(
        "knn_regressor",
        "regression",
        lambda: preprocessing_stage() | neighbors.KNNRegressor(n_neighbors=5, engine=_knn_engine()),
        "Mean target of the 5 nearest of the last 1000 rows (standardised): for local patterns "
        "on a few columns, follows drift by forgetting; about 15x the linear cost.",
    ),
    ModelSpec(
        "knn_classifier",
        "multiclass",
        lambda: preprocessing_stage() | neighbors.KNNClassifier(n_neighbors=5, engine=_knn_engine()),
        "Distance-weighted vote of the 5 nearest of the last 1000 rows, two or more classes: for "
        "local patterns on a few columns, follows drift by forgetting; about 15x the linear cost.",
    ),
    ModelSpec(
        "half_space_trees",
        "anomaly",
        lambda: preprocessing_stage(scaler=preprocessing.MinMaxScaler)
        | anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=42),
        "Half-space trees on min-max scaled columns, needing no labels: an anomaly score in "
        "[0, 1], higher is rarer, 0 for the first 250 rows. Splits only on columns present in "
        "the first row, so numbers matter most; about 2x the linear cost.",
    ),
)

CATALOG: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def is_custom(name: str) -> bool:
    """Whether ``name`` is a user's ``module:factory`` rather than a catalog name.

    >>> is_custom("mypkg.models:make"), is_custom("linear_regression")
    (True, False)
    """
    return ":" in name


def task_of(estimator: Any) -> Task | None:
    """The task a river estimator solves (a pipeline's is its last step's), or None.

    >>> task_of(preprocessing_stage() | linear_model.LogisticRegression())
    'binary'
    >>> task_of(tree.HoeffdingTreeClassifier()), task_of(preprocessing.StandardScaler())
    ('multiclass', None)
    """
    while isinstance(estimator, compose.Pipeline):
        if not estimator.steps:
            return None
        estimator = list(estimator.steps.values())[-1]
    if isinstance(estimator, base.AnomalyDetector):
        return "anomaly"
    if isinstance(estimator, base.Classifier):
        return "multiclass" if getattr(estimator, "_multiclass", False) else "binary"
    if isinstance(estimator, base.Regressor):
        return "regression"
    return None


_allowed_modules: tuple[str, ...] | None = None  # None: no policy (library use)


def allow_custom_modules(modules: Iterable[str] | None) -> None:
    """The process-wide policy for ``module:factory`` models: only these modules (and their
    submodules) may be imported. rowcast's processes set it from
    ``ROWCAST_CUSTOM_MODEL_MODULES`` before they build any model, so writing a deployment row
    (``rowcast.deploy``) never makes a worker import and call code the operator did not allow.
    Catalog models are always allowed.

    >>> allow_custom_modules(["mypkg"])
    >>> get_model("os:abort")
    Traceback (most recent call last):
    ...
    rowcast.core.errors.ConfigError: custom model 'os:abort': module 'os' is not allowed here; ...
    >>> allow_custom_modules(None)  # no policy again (library use)
    """
    global _allowed_modules
    _allowed_modules = None if modules is None else tuple(m.strip() for m in modules
                                                          if m.strip())


def _check_allowed(name: str, module_name: str) -> None:
    if _allowed_modules is None:
        return
    if not any(module_name == m or module_name.startswith(m + ".") for m in _allowed_modules):
        now = ", ".join(_allowed_modules) or "none"
        raise ConfigError(f"custom model {name!r}: module {module_name!r} is not allowed here; "
                          "the operator lists the modules custom models may come from in "
                          f"ROWCAST_CUSTOM_MODEL_MODULES (now: {now})")


def _load_factory(name: str) -> Callable[[], Any]:
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"custom model {name!r} must be written 'module:factory', "
                          "e.g. 'mypkg.models:make'")
    _check_allowed(name, module_name)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"custom model {name!r}: cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc})") from exc
    try:
        for part in attribute.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ConfigError(f"custom model {name!r}: module {module_name!r} has no attribute "
                          f"{attribute!r}") from None
    if not callable(target):
        raise ConfigError(f"custom model {name!r}: {attribute!r} is not callable (it is a "
                          f"{type(target).__name__}); name a function that returns a river estimator")
    return target


def _build_custom(name: str, factory: Callable[[], Any], expected: Task | None = None) -> Any:
    """Call a user's factory, turning every way it can fail into a ConfigError."""
    try:
        estimator = factory()
    except Exception as exc:
        raise ConfigError(f"custom model {name!r}: the factory raised "
                          f"{type(exc).__name__}: {exc}") from exc
    task = task_of(estimator)
    if task is None:
        raise ConfigError(
            f"custom model {name!r} returned {type(estimator).__name__}, which is not a river "
            "regressor, classifier or anomaly detector (nor a pipeline ending in one)")
    if expected is not None and task != expected:
        raise ConfigError(f"custom model {name!r} returned a {task} estimator, "
                          f"having returned a {expected} one before")
    return estimator


def custom_model(name: str) -> ModelSpec:
    """The spec of a user's ``module:factory``, its task read from one estimator it builds."""
    factory = _load_factory(name)
    task = task_of(_build_custom(name, factory))
    assert task is not None
    return ModelSpec(
        name, task, lambda: _build_custom(name, factory, task),
        f"User-supplied factory {name}, used as built (no rowcast preprocessing).",
    )


def get_model(name: str) -> ModelSpec:
    """Look a model up by name (or load a ``module:factory``), naming the valid ones if unknown."""
    if is_custom(name):
        return custom_model(name)
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ConfigError(f"unknown model {name!r}; the catalog has: {known}, "
                          "or a custom 'module:factory'") from None
