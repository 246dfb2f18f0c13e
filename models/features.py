"""Turn a row (as a Debezium ``after`` dict) into the feature dict a river model takes.

Pure, total and deterministic: a value that cannot be a feature of its kind raises
:class:`FeatureError`, which the stream turns into a dead letter; NULL simply leaves the feature
out, which river models treat as "unknown" rather than zero.

Numbers and booleans become floats, categories strings (the catalog's pipelines one-hot encode
them). A timestamp column ``c`` becomes several numbers, all in UTC, because the raw instant alone
tells a model little about daily or weekly patterns:

==============  ==========================================
``c``           seconds since 1970-01-01 (trend, age)
``c__hour``     hour of the day, 0-23
``c__dow``      day of the week, 0 (Monday) to 6 (Sunday)
``c__month``    month, 1-12
==============  ==========================================

>>> from rowcast.models.deployment import Feature
>>> build_features({"age": 31, "city": "Lyon", "vip": None},
...                (Feature("age", "number"), Feature("city", "category"), Feature("vip", "boolean")))
{'age': 31.0, 'city': 'Lyon'}
>>> build_features({"seen": 1_700_000_000_000_000}, (Feature("seen", "timestamp"),))
{'seen': 1700000000.0, 'seen__hour': 22.0, 'seen__dow': 1.0, 'seen__month': 11.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rowcast.core.errors import RowcastError
from rowcast.models.deployment import Feature, FeatureKind

TIMESTAMP_PARTS = ("hour", "dow", "month")
MISSING_COLUMN = "missing_column"  # dead-letter reason: see MissingColumn
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class FeatureError(RowcastError):
    """A column value that cannot become a feature of the deployment's declared kind."""

    reason = "bad_feature"  # the dead letter's reason when a feature (not a label) raises it

    def __init__(self, column: str, value: Any, why: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"column {column!r} value {shown}: {why}")
        self.column = column


class MissingColumn(FeatureError):
    """A column the deployment names that the row does not have at all: absent, not NULL (see
    :meth:`rowcast.models.deployment.Deployment.rows_have_columns_at`).

    >>> str(MissingColumn("income"))  # doctest: +ELLIPSIS
    "column 'income' is not in the row: renamed or dropped since the deployment was defined..."
    """

    reason = MISSING_COLUMN

    def __init__(self, column: str) -> None:
        RowcastError.__init__(self, f"column {column!r} is not in the row: renamed or dropped "
                                    "since the deployment was defined (or a generated column, "
                                    "which logical replication does not send)")
        self.column = column


def as_number(column: str, value: Any) -> float:
    """A finite float (labels too: their own limit is in :mod:`rowcast.models.scoring`)."""
    if type(value) is float and value - value == 0.0:  # the common case: a finite float
        return value
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise FeatureError(column, value, "expected a number") from None
            if math.isinf(number) and "inf" not in value.lower():  # numeric 1e400: finite
                raise OverflowError
        else:
            raise FeatureError(column, value, "expected a number")
    except OverflowError:
        raise FeatureError(column, value, "too large for a float") from None
    if not math.isfinite(number):
        raise FeatureError(column, value, "NaN and infinity cannot be learned from")
    return number


# the largest feature magnitude taken. A model's running statistics square a feature's distance
# from its mean and sum such squares over the rows (a scaler's variance; a tree's split
# statistics, per leaf, for as long as the leaf lives), and a model holding a number whose
# square overflows (beyond ~9.5e153) is broken for good (rowcast.models.health): its learner
# pauses the deployment until an operator rolls it back. A sum of 1e53 squares of 1e50 stays
# inside that, so no catalog model gets there; 1e75 did not (a tree classifier with an
# alternating ±1e75 feature, after 15,000 rows at one leaf). Larger values are sentinels or
# errors, and one `numeric` 1e200 paused a deployment that way (found by hand). Written out as
# literals in the fast paths, for speed (a test holds them equal)
FEATURE_LIMIT = 1e50


def _feature_number(column: str, value: Any) -> float:
    if type(value) is float and -1e50 <= value <= 1e50:
        return value
    number = as_number(column, value)
    if not -FEATURE_LIMIT <= number <= FEATURE_LIMIT:
        raise FeatureError(column, value, f"beyond ±{FEATURE_LIMIT:g}, too large to learn from "
                           "(a model's running variance of it overflows)")
    return number


MAX_CATEGORY_CHARS = 1000  # longer text is a document, not a category: refused, not one-hot encoded


def _category(column: str, value: Any) -> str:
    if isinstance(value, (str, int)):  # bool is an int
        text = str(value)
        if len(text) > MAX_CATEGORY_CHARS:
            raise FeatureError(column, text[:40], f"text of {len(text)} characters is too long "
                               f"for a category (limit {MAX_CATEGORY_CHARS})")
        return text
    raise FeatureError(column, value, "expected a text or integer category")


def _boolean(column: str, value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    raise FeatureError(column, value, "expected a boolean")


def _instant(column: str, value: Any) -> tuple[int, datetime]:
    """Microseconds since epoch and the UTC moment of a timestamp value.

    Accepts Debezium's MicroTimestamp (``timestamp``: an integer) and ZonedTimestamp
    (``timestamptz``: an ISO-8601 string with its offset, ``Z`` for UTC).
    """
    if isinstance(value, str) and value in ("infinity", "-infinity"):
        raise FeatureError(column, value, "a Postgres ±infinity timestamp has no hour, day or "
                                          "month to learn from; store NULL for 'unknown' instead")
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, _EPOCH + timedelta(microseconds=value)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
                return (moment - _EPOCH) // _MICROSECOND, moment
    except OverflowError:
        raise FeatureError(column, value, "timestamp outside the years 1 to 9999") from None
    except ValueError:
        pass
    raise FeatureError(column, value, "expected a timestamp: integer microseconds since epoch, "
                                      "or an ISO-8601 string with a UTC offset")


def _timestamp(column: str, value: Any) -> float:
    """A timestamp as seconds since epoch (the single-number form, e.g. for a target)."""
    return _instant(column, value)[0] / 1_000_000


def _timestamp_features(column: str, value: Any) -> dict[str, float | str]:
    micros, moment = _instant(column, value)
    return {column: micros / 1_000_000, f"{column}__hour": float(moment.hour),
            f"{column}__dow": float(moment.weekday()), f"{column}__month": float(moment.month)}


CONVERTERS = {"number": _feature_number, "category": _category, "boolean": _boolean, "timestamp": _timestamp}


def convert(column: str, kind: FeatureKind, value: Any) -> float | str:
    """One column value as a single feature of ``kind`` (a timestamp as epoch seconds)."""
    return CONVERTERS[kind](column, value)


def expand(column: str, kind: FeatureKind, value: Any) -> dict[str, float | str]:
    """The features one non-NULL column value becomes: one, or several for a timestamp.

    >>> expand("at", "timestamp", "2024-03-09T23:30:00.000000Z")
    {'at': 1710027000.0, 'at__hour': 23.0, 'at__dow': 5.0, 'at__month': 3.0}
    """
    if kind == "timestamp":
        return _timestamp_features(column, value)
    return {column: CONVERTERS[kind](column, value)}


def build_features(row: Mapping[str, Any], features: Sequence[Feature],
                   require_columns: bool = False) -> dict[str, float | str]:
    """The feature dict for one row; NULL columns are left out, and so are columns the row
    does not have, unless ``require_columns``: then such a column raises :class:`MissingColumn`.

    >>> build_features({"age": None}, (Feature("age", "number"),), require_columns=True)
    {}
    >>> build_features({"years": 3}, (Feature("age", "number"),), require_columns=True)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    rowcast.models.features.MissingColumn: column 'age' is not in the row: renamed or dropped ...
    """
    out: dict[str, float | str] = {}
    for feature in features:
        name, kind = feature.name, feature.kind
        value = row.get(name)
        if value is None:
            if require_columns and name not in row:
                raise MissingColumn(name)
            continue
        if kind == "number" and type(value) is float and -1e50 <= value <= 1e50:
            out[name] = value  # within FEATURE_LIMIT (so finite): _feature_number's answer
        elif kind == "timestamp":
            out.update(_timestamp_features(name, value))
        else:
            out[name] = CONVERTERS[kind](name, value)
    return out
