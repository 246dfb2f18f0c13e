"""Named river pipelines a deployment can pick with ``--model NAME``.

Every entry builds a *fresh* estimator whose first stage is the same type-routed preprocessing:
numbers are standardised, strings (categorical columns) are one-hot encoded, missing features are
simply absent from the dict. Keeping that inside the pipeline means scoring and learning always
see the same transformation, and the whole thing pickles as one snapshot.

>>> spec = get_model("linear_regression")
>>> spec.task
'regression'
>>> model = spec.build()
>>> model.predict_one({"age": 30.0, "city": "Lyon"})
0.0
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from river import base, compose, linear_model, preprocessing, tree

from rowcast.errors import ConfigError

Task = Literal["regression", "binary", "multiclass", "anomaly"]


def preprocessing_stage(scale: bool = True) -> base.Transformer:
    """Numbers (optionally standardised) beside one-hot encoded strings."""
    numeric: base.Transformer = compose.SelectType(numbers.Number)
    if scale:
        numeric = numeric | preprocessing.StandardScaler()
    return numeric + (compose.SelectType(str) | preprocessing.OneHotEncoder())


@dataclass(frozen=True)
class ModelSpec:
    """A catalog entry: what task it solves and how to build a fresh estimator."""

    name: str
    task: Task
    factory: Callable[[], base.Estimator]
    description: str

    def build(self) -> base.Estimator:
        return self.factory()


_SPECS = (
    ModelSpec(
        "linear_regression",
        "regression",
        lambda: preprocessing_stage() | linear_model.LinearRegression(),
        "Standardised linear regression trained by SGD; fast, a sound first baseline.",
    ),
    ModelSpec(
        "logistic_regression",
        "binary",
        lambda: preprocessing_stage() | linear_model.LogisticRegression(),
        "Standardised logistic regression for yes/no targets; scores are P(True).",
    ),
    ModelSpec(
        "hoeffding_tree_regressor",
        "regression",
        lambda: preprocessing_stage(scale=False)
        | tree.HoeffdingAdaptiveTreeRegressor(seed=42),
        "Hoeffding adaptive tree: non-linear, adapts to drift; about 15x the linear cost.",
    ),
    ModelSpec(
        "hoeffding_tree_classifier",
        "multiclass",
        lambda: preprocessing_stage(scale=False)
        | tree.HoeffdingAdaptiveTreeClassifier(seed=42),
        "Hoeffding adaptive tree classifier for two or more classes.",
    ),
)

CATALOG: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_model(name: str) -> ModelSpec:
    """Look a model up by name, with the list of valid names when it is unknown."""
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ConfigError(f"unknown model {name!r}; the catalog has: {known}") from None
