"""Feature building: timestamps become UTC calendar numbers, bad values get a reason, NULLs vanish."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowcast.connectors.pgtypes import decoder_for
from rowcast.models.deployment import Feature
from rowcast.models.features import TIMESTAMP_PARTS, FeatureError, build_features, convert, expand

TS, TSTZ = 1114, 1184
SEEN = (Feature("seen", "timestamp"),)
MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // MICROSECOND


@pytest.mark.parametrize(("value", "expected"), [
    (0, {"seen": 0.0, "seen__hour": 0.0, "seen__dow": 3.0, "seen__month": 1.0}),  # a Thursday
    (-1, {"seen": -1e-6, "seen__hour": 23.0, "seen__dow": 2.0, "seen__month": 12.0}),
    (1_700_000_000_000_000,
     {"seen": 1_700_000_000.0, "seen__hour": 22.0, "seen__dow": 1.0, "seen__month": 11.0}),
    ("2024-03-09T23:30:00.000000Z",
     {"seen": 1_710_027_000.0, "seen__hour": 23.0, "seen__dow": 5.0, "seen__month": 3.0}),
    ("2024-03-10T01:30:00+02:00",  # the same instant, written with an offset
     {"seen": 1_710_027_000.0, "seen__hour": 23.0, "seen__dow": 5.0, "seen__month": 3.0}),
])
def test_a_timestamp_becomes_epoch_seconds_and_utc_calendar_parts(value, expected) -> None:
    assert build_features({"seen": value}, SEEN) == expected
    assert list(build_features({"seen": value}, SEEN)) == ["seen"] + [f"seen__{p}" for p in TIMESTAMP_PARTS]


def test_a_null_timestamp_leaves_all_its_features_out() -> None:
    features = (Feature("age", "number"), *SEEN)
    assert build_features({"age": 3, "seen": None}, features) == {"age": 3.0}
    assert build_features({"age": 3}, features) == {"age": 3.0}


@pytest.mark.parametrize(("value", "why"), [
    ("infinity", "infinity timestamp has no hour"),
    ("-infinity", "infinity timestamp has no hour"),
    ("yesterday", "expected a timestamp"),
    ("2024-03-09T23:30:00", "expected a timestamp"),  # no offset: which zone?
    (1.7e9, "expected a timestamp"),
    (True, "expected a timestamp"),
    ([1], "expected a timestamp"),
    (10**20, "outside the years 1 to 9999"),
    (-(10**20), "outside the years 1 to 9999"),
])
def test_unusable_timestamps_are_refused_with_a_reason(value, why) -> None:
    with pytest.raises(FeatureError, match=why) as caught:
        build_features({"seen": value}, SEEN)
    assert caught.value.column == "seen"


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_decoded_timestamps_expand_to_their_calendar(moment: datetime) -> None:
    value = decoder_for(TS)(moment.isoformat(sep=" ").encode())
    got = expand("t", "timestamp", value)
    assert got == {"t": value / 1_000_000, "t__hour": moment.hour, "t__dow": moment.weekday(),
                   "t__month": moment.month}
    assert all(isinstance(v, float) for v in got.values())
    assert convert("t", "timestamp", value) == got["t"]


@given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(min_value=-15 * 60, max_value=15 * 60))
def test_timestamptz_expands_like_the_same_utc_instant(moment: datetime, offset_min: int) -> None:
    local = moment.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    sign = "+" if offset_min >= 0 else "-"
    hh, mm = divmod(abs(offset_min), 60)
    zoned = decoder_for(TSTZ)(f"{moment.isoformat(sep=' ')}{sign}{hh:02d}:{mm:02d}".encode())
    assert expand("t", "timestamp", zoned) == expand("t", "timestamp", micros(local))


def test_other_kinds_still_give_one_feature_each() -> None:
    features = (Feature("age", "number"), Feature("city", "category"), Feature("vip", "boolean"))
    row = {"age": "41.5", "city": 7, "vip": False}
    assert build_features(row, features) == {"age": 41.5, "city": "7", "vip": 0.0}
    assert expand("age", "number", 2) == {"age": 2.0}


NUMBER = (Feature("amount", "number"),)


@pytest.mark.parametrize("value", [1.01e50, -1e51, 1e75, 1e200, -1.7976931348623157e308,
                                   "1e100", "-2e80", 10**51])
def test_a_number_too_large_to_learn_from_is_refused_with_its_reason(value) -> None:
    """A finite feature of 1e200 (a valid double or numeric: a sentinel, an error) overflowed a
    scaler's running variance, and the learner then paused the whole deployment until an
    operator rolled it back (found by hand, `numeric` 1e200): the scorer refuses the row."""
    with pytest.raises(FeatureError) as refused:
        build_features({"amount": value}, NUMBER)
    assert refused.value.reason == "bad_feature"
    assert "beyond ±1e+50" in str(refused.value) and "amount" in str(refused.value)


@pytest.mark.parametrize("value", ["1e400", "-1e400", 10**400])
def test_a_number_beyond_any_float_is_refused_as_too_large_not_as_infinity(value) -> None:
    """`numeric` 1e400 is a finite number: it was refused as "NaN and infinity" (and an int
    that large raised OverflowError)."""
    with pytest.raises(FeatureError) as refused:
        build_features({"amount": value}, NUMBER)
    assert "too large for a float" in str(refused.value)
    with pytest.raises(FeatureError, match="NaN and infinity"):
        build_features({"amount": "Infinity"}, NUMBER)


@pytest.mark.parametrize("value", [1e50, -1e50, "1e50", 10**50, 1.5e-300, 0.0, -0.0, 7])
def test_numbers_up_to_the_limit_are_features(value) -> None:
    assert build_features({"amount": value}, NUMBER) == {"amount": float(value)}


def test_the_fast_path_and_the_converter_agree_at_the_limit() -> None:
    """The fast paths write the limit out as literals: they must take what the converter takes."""
    import math

    from rowcast.models.features import FEATURE_LIMIT

    above = math.nextafter(FEATURE_LIMIT, math.inf)
    for value in (above, -above, math.inf, math.nan):
        with pytest.raises(FeatureError):
            build_features({"amount": value}, NUMBER)
        with pytest.raises(FeatureError):
            expand("amount", "number", value)
    for value in (FEATURE_LIMIT, -FEATURE_LIMIT):
        assert expand("amount", "number", value) == {"amount": value}
        assert build_features({"amount": value}, NUMBER) == {"amount": value}
