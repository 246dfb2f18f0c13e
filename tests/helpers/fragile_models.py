"""A ``module:factory`` model that fails on one input, for the worker-resilience tests.

``make()`` is a linear regression whose ``predict_one`` raises for ``x == 13``, the way a
user's model can fail on a row it was never meant to see; every other row scores.
"""

from __future__ import annotations

from typing import Any

from river import linear_model

FAIL_ON = 13.0


class FragileRegression(linear_model.LinearRegression):
    """A linear regression that raises on one feature value (and learns like any other)."""

    def predict_one(self, x: dict[str, Any], **kwargs: Any) -> float:
        if x.get("x") == FAIL_ON:
            raise ValueError(f"fragile model cannot score x={FAIL_ON}")
        return super().predict_one(x, **kwargs)


def make() -> FragileRegression:
    return FragileRegression()


def quartic() -> Any:
    """``x, x², x³, x⁴ | scaler | linear regression``: a feature of 1e50, within what the
    scorer takes (:data:`rowcast.models.features.FEATURE_LIMIT`), is 1e200 at the fourth power:
    the scaler's mean of it cannot be squared, a real overflow for the model-health tests,
    which the catalog's models, scaling the raw features, no longer meet."""
    from river import compose, feature_extraction, preprocessing

    return compose.Pipeline(feature_extraction.PolynomialExtender(degree=4, include_bias=False),
                            preprocessing.StandardScaler(), linear_model.LinearRegression())
