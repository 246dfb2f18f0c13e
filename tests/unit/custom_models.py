"""User-style ``module:factory`` models for the custom-model tests and the catalog's doctest.

A factory takes no arguments and returns a fresh river estimator. rowcast uses it as built, so it
handles the feature dicts itself: floats for numbers, booleans and timestamps, strings for
categories.
"""

from __future__ import annotations

import numbers

from river import anomaly, compose, linear_model, preprocessing, tree


def _features(numeric: type = preprocessing.StandardScaler) -> compose.TransformerUnion:
    return ((compose.SelectType(numbers.Number) | numeric())
            + (compose.SelectType(str) | preprocessing.OneHotEncoder()))


def churn() -> compose.Pipeline:
    """Binary: will this customer leave?"""
    return _features() | linear_model.LogisticRegression()


def spend() -> compose.Pipeline:
    """Regression."""
    return _features() | linear_model.LinearRegression()


def plan() -> tree.HoeffdingTreeClassifier:
    """Multi-class, and no pipeline at all: trees take numbers as they come."""
    return tree.HoeffdingTreeClassifier()


def odd() -> compose.Pipeline:
    """Anomaly scores."""
    return _features(preprocessing.MinMaxScaler) | anomaly.HalfSpaceTrees(seed=1)


def scaler_only() -> preprocessing.StandardScaler:
    """A transformer, not a model: rowcast must refuse it."""
    return preprocessing.StandardScaler()


def broken() -> compose.Pipeline:
    raise RuntimeError("the model server is down")


NOT_CALLABLE = 42
