"""Text-format values to Debezium's JSON encoding, per type family, with the edge cases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowcast.connectors.pgtypes import decode_value, decoder_for
from rowcast.core.errors import DecodeError

INT8, FLOAT8, NUMERIC, BOOL, DATE, TIME, TIMETZ, TS, TSTZ, INTERVAL, BYTEA, JSONB, ENUMISH = (
    20, 701, 1700, 16, 1082, 1083, 1266, 1114, 1184, 1186, 17, 3802, 99999)


@pytest.mark.parametrize(("oid", "raw", "expected"), [
    (INT8, b"-9223372036854775808", -9223372036854775808),
    (FLOAT8, b"1e-300", 1e-300),
    (FLOAT8, b"NaN", "NaN"),
    (FLOAT8, b"-Infinity", "-Infinity"),
    (NUMERIC, b"-0.0000000000000000000000000000000000000001", "-0.0000000000000000000000000000000000000001"),
    (NUMERIC, b"NaN", "NaN"),
    (BOOL, b"f", False),
    (DATE, b"1970-01-01", 0),
    (DATE, b"1900-03-01", -25508),
    (DATE, b"-infinity", "-infinity"),
    (TIME, b"00:00:00", 0),
    (TIME, b"12:30:00.5", 45_000_500_000),
    (TIMETZ, b"00:30:00-01", "01:30:00.000000Z"),
    (TIMETZ, b"00:30:00+05:45", "18:45:00.000000Z"),
    (TS, b"1970-01-01 00:00:00.000001", 1),
    (TS, b"1969-12-31 23:59:59", -1_000_000),
    (TSTZ, b"2024-01-01 00:00:00+00", "2024-01-01T00:00:00.000000Z"),
    (TSTZ, b"2024-01-01 05:30:00.25+05:30", "2024-01-01T00:00:00.250000Z"),
    (TSTZ, b"1900-01-01 00:00:00+00:09:21", "1899-12-31T23:50:39.000000Z"),
    (INTERVAL, b"00:00:00", 0),
    (INTERVAL, b"1 day", 86_400_000_000),
    (INTERVAL, b"-1 days +01:00:00", -82_800_000_000),
    (INTERVAL, b"1 mon", 2_629_800_000_000),
    (BYTEA, b"\\x", ""),
    (JSONB, b'{"a": 1}', '{"a": 1}'),
    (ENUMISH, b"happy", "happy"),
    (1007, b"{}", []),
    (1007, b"{{1,2},{NULL,4}}", [[1, 2], [None, 4]]),
    (1009, b'{"","\\\\",NULL,"NULL"}', ["", "\\", None, "NULL"]),
    (1007, b"[0:1]={5,6}", [5, 6]),
    (1231, b"{1.10,NaN}", ["1.10", "NaN"]),
])
def test_values(oid: int, raw: bytes, expected: object) -> None:
    assert decoder_for(oid)(raw) == expected


def test_null_is_none_for_every_type() -> None:
    assert decode_value(INT8, None) is None and decode_value(TSTZ, None) is None


@pytest.mark.parametrize(("oid", "raw"), [
    (DATE, b"0044-03-15 BC"), (TS, b"0044-03-15 00:00:00 BC"), (BYTEA, b"escaped\\000"),
    (1007, b"{1,2"), (TSTZ, b"2024-01-01 00:00:00"),
])
def test_unsupported_or_broken_values_are_decode_errors(oid: int, raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decoder_for(oid)(raw)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_int8_round_trip(n: int) -> None:
    assert decoder_for(INT8)(str(n).encode()) == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float8_round_trip(x: float) -> None:
    assert decoder_for(FLOAT8)(repr(x).encode()) == x


@given(st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)))
def test_dates_are_days_since_epoch(d: date) -> None:
    assert decoder_for(DATE)(d.isoformat().encode()) == (d - date(1970, 1, 1)).days


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
def test_timestamps_are_micros_since_epoch(moment: datetime) -> None:
    delta = moment - datetime(1970, 1, 1)
    assert decoder_for(TS)(moment.isoformat(sep=" ").encode()) == delta // timedelta(microseconds=1)


@given(st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(min_value=-15 * 60, max_value=15 * 60))
def test_timestamptz_is_normalised_to_utc(moment: datetime, offset_min: int) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    local = moment.replace(tzinfo=zone)
    sign = "+" if offset_min >= 0 else "-"
    hh, mm = divmod(abs(offset_min), 60)
    text = f"{moment.isoformat(sep=' ')}{sign}{hh:02d}:{mm:02d}"
    assert decoder_for(TSTZ)(text.encode()) == local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
