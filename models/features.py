"""Turn a row (as a Debezium ``after`` dict) into the feature dict a river model takes.

Pure and total: a value that cannot be a feature of its kind raises
:class:`FeatureError`, which the stream turns into a dead letter; NULL simply leaves the feature
out, which river models treat as "unknown" rather than zero.

>>> from models.deployment import Feature
>>> build_features({"age": 31, "city": "Lyon", "vip": None},
...                (Feature("age", "number"), Feature("city", "category"), Feature("vip", "boolean")))
{'age': 31.0, 'city': 'Lyon'}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from models.deployment import Feature, FeatureKind
from rowcast.errors import RowcastError


class FeatureError(RowcastError):
    """A column value that cannot become a feature of the deployment's declared kind."""

    def __init__(self, column: str, value: Any, why: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"column {column!r} value {shown}: {why}")
        self.column = column


def _number(column: str, value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise FeatureError(column, value, "expected a number") from None
    else:
        raise FeatureError(column, value, "expected a number")
    if not math.isfinite(number):
        raise FeatureError(column, value, "NaN and infinity cannot be learned from")
    return number


def _category(column: str, value: Any) -> str:
    if isinstance(value, str | int | bool):
        return str(value)
    raise FeatureError(column, value, "expected a text or integer category")


def _boolean(column: str, value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    raise FeatureError(column, value, "expected a boolean")


def _timestamp(column: str, value: Any) -> float:
    """Debezium MicroTimestamp (µs since epoch) becomes seconds since epoch."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1_000_000
    raise FeatureError(column, value, "expected a timestamp in microseconds since epoch")


CONVERTERS = {"number": _number, "category": _category, "boolean": _boolean, "timestamp": _timestamp}


def convert(column: str, kind: FeatureKind, value: Any) -> float | str:
    """One column value as a feature of ``kind``."""
    return CONVERTERS[kind](column, value)


def build_features(row: Mapping[str, Any], features: Sequence[Feature]) -> dict[str, float | str]:
    """The feature dict for one row; NULL or missing columns are left out."""
    out: dict[str, float | str] = {}
    for feature in features:
        value = row.get(feature.name)
        if value is not None:
            out[feature.name] = CONVERTERS[feature.kind](feature.name, value)
    return out
