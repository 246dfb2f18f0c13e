"""Text-format values to Debezium's JSON encoding, per type family, with the edge cases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowcast.connectors.pgtypes import _civil_from_days, _days_from_civil, decode_value, decoder_for
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
    (1007, b"{1,2"), (TSTZ, b"2024-01-01 00:00:00"),
    (TS, b"294276-12-31 23:59:59"),  # µs since 1970 beyond 64 bits
    (TSTZ, b"294276-12-31 23:59:59.999999+00"),
    (TS, b"294247-01-10 04:00:54.775808"),  # one µs past int64
    (INTERVAL, b"178000000 years"), (INTERVAL, b"P178000000Y"), (INTERVAL, b"-2147483648 days"),
    (INTERVAL, b"1 fortnight"), (INTERVAL, b"garbage"),
    (DATE, b"29/02/2024"), (DATE, b"2024-13-01"), (TS, b"02/29/2024 12:00:00"),
])
def test_unsupported_or_broken_values_are_decode_errors(oid: int, raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decoder_for(oid)(raw)


@pytest.mark.parametrize(("oid", "raw", "expected"), [
    (DATE, b"0044-03-15 BC", -735_160),  # BC years are astronomical: 44 BC = -43
    (DATE, b"4713-01-01 BC", -2_440_550),  # PostgreSQL's first date
    (DATE, b"10000-01-01", 2_932_897),
    (DATE, b"5874897-12-31", 2_145_042_905),  # PostgreSQL's last date
    (DATE, b"0001-01-01 BC", -719_528),  # 1 BC (year 0) is a leap year
    (TS, b"4713-01-01 00:00:00 BC", -2_440_550 * 86_400_000_000),
    (TS, b"0044-03-15 12:00:00 BC", -735_160 * 86_400_000_000 + 43_200_000_000),
    (TS, b"294247-01-10 04:00:54.775807", 2**63 - 1),
    (TS, b"infinity", "infinity"),
    (TSTZ, b"-infinity", "-infinity"),
    (TSTZ, b"0044-03-15 12:00:00+00 BC", "-0043-03-15T12:00:00.000000Z"),
    (TSTZ, b"0044-03-15 12:00:00+00:09:21 BC", "-0043-03-15T11:50:39.000000Z"),
    (TSTZ, b"12345-06-07 10:09:10+02", "+12345-06-07T08:09:10.000000Z"),
    (TSTZ, b"0001-01-01 00:00:00+01", "0000-12-31T23:00:00.000000Z"),
    (BYTEA, b"\\000\\377\\\\A'\\012", "AP9cQScK"),  # bytea_output = escape
    (BYTEA, b"\\x00ff5c41270a", "AP9cQScK"),
])
def test_values_python_datetime_cannot_hold(oid: int, raw: bytes, expected: object) -> None:
    assert decoder_for(oid)(raw) == expected


_M, _D, _H = 2_629_800_000_000, 86_400_000_000, 3_600_000_000
# one interval, then its text under IntervalStyle postgres, postgres_verbose, sql_standard and
# iso_8601, as PostgreSQL 15 printed them
INTERVALS = [
    (14 * _M - 3 * _D + 4 * _H + 306_500_000, "1 year 2 mons -3 days +04:05:06.5",
     "@ 1 year 2 mons -3 days 4 hours 5 mins 6.5 secs", "+1-2 -3 +4:05:06.5",
     "P1Y2M-3DT4H5M6.5S"),
    (-14 * _M + 3 * _D - 4 * _H - 306_789_000, "-1 years -2 mons +3 days -04:05:06.789",
     "@ 1 year 2 mons -3 days 4 hours 5 mins 6.789 secs ago", "-1-2 +3 -4:05:06.789",
     "P-1Y-2M3DT-4H-5M-6.789S"),
    (-_D - _H, "-1 days -01:00:00", "@ 1 day 1 hour ago", "-1 1:00:00", "P-1DT-1H"),
    (0, "00:00:00", "@ 0", "0", "PT0S"),
    (-3 * _D - 4 * _H - 306_000_000, "-3 days -04:05:06", "@ 3 days 4 hours 5 mins 6 secs ago",
     "-3 4:05:06", "P-3DT-4H-5M-6S"),
    (12 * _M, "1 year", "@ 1 year", "1-0", "P1Y"),
    (-14 * _M, "-1 years -2 mons", "@ 1 year 2 mons ago", "-1-2", "P-1Y-2M"),
    (-500_000, "-00:00:00.5", "@ 0.5 secs ago", "-0:00:00.5", "PT-0.5S"),
    (5 * _D, "5 days", "@ 5 days", "5 0:00:00", "P5D"),
    (-5 * _D, "-5 days", "@ 5 days ago", "-5 0:00:00", "P-5D"),
    (1_000_000, "00:00:01", "@ 1 sec", "0:00:01", "PT1S"),
    (2 * _M + 1, "2 mons 00:00:00.000001", "@ 2 mons 0.000001 secs", "+0-2 +0 +0:00:00.000001",
     "P2MT0.000001S"),
]


@pytest.mark.parametrize("style", range(4), ids=["postgres", "postgres_verbose", "sql_standard",
                                                 "iso_8601"])
@pytest.mark.parametrize("case", INTERVALS, ids=lambda case: case[1])
def test_intervals_decode_under_every_interval_style(case: tuple, style: int) -> None:
    assert decoder_for(INTERVAL)(case[1 + style].encode()) == case[0]


@given(st.integers(min_value=-2_440_550, max_value=2_145_042_905))
def test_every_postgres_date_round_trips_through_its_iso_text(days: int) -> None:
    year, month, day = _civil_from_days(days)
    text = f"{year:04d}-{month:02d}-{day:02d}" if year > 0 else \
        f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    assert _days_from_civil(year, month, day) == days
    assert decoder_for(DATE)(text.encode()) == days


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
