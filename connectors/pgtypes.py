"""Column values from pgoutput's text format to Debezium's JSON encoding, by type OID.

One small decoder per type family, chosen once per column when a Relation message arrives
(``decoder_for``) and applied to every row. The encoding follows Debezium's PostgreSQL connector
with ``decimal.handling.mode=string``, ``time.precision.mode=adaptive_time_microseconds`` and
``binary.handling.mode=base64``:

====================  ==============================================================
type                  JSON value
====================  ==============================================================
int2, int4, int8, oid integer
float4, float8        number; ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` as strings
numeric               string, exactly as Postgres printed it (no precision loss)
bool                  true / false
text, varchar, bpchar string (also enums, name, citext, and any type not listed here)
date                  integer days since 1970-01-01 (io.debezium.time.Date)
time                  integer µs since midnight (io.debezium.time.MicroTime)
timetz                string ``HH:MM:SS.ffffffZ`` in UTC (io.debezium.time.ZonedTime)
timestamp             integer µs since epoch (io.debezium.time.MicroTimestamp)
timestamptz           string ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (ZonedTimestamp)
interval              integer µs, a month as 365.25/12 days, as Debezium's MicroDuration
uuid                  string
json, jsonb           string holding the JSON text (io.debezium.data.Json)
bytea                 base64 string
arrays of the above   JSON arrays (nested for multi-dimensional arrays)
====================  ==============================================================

``infinity`` / ``-infinity`` dates and timestamps become the strings ``"infinity"`` and
``"-infinity"``: no integer would be honest. Dates and timestamps are computed by calendar
arithmetic, not with Python's ``datetime``, so every date Postgres stores decodes (4713 BC to
5874897 AD, BC years counted astronomically, 1 BC = year 0); a ``timestamptz`` outside the years
0-9999 is printed as Java's ISO formatter does (``+12345-06-07T...Z``, ``-0043-03-15T...Z``).
Integers must fit in 64 bits (Debezium's int64, and the JSON encoder's limit): a timestamp past
about 294247 AD or an interval beyond ±292271 years is refused with :class:`DecodeError`.

The source pins its session's output settings (``DateStyle ISO``, ``IntervalStyle postgres``,
``bytea_output hex``, ``TimeZone UTC``, ``extra_float_digits 3``, see
:func:`rowcast.connectors.slot.stream_changes`), yet the decoders also read the other
``IntervalStyle`` outputs and escape-format ``bytea``, so a value never depends on a
database or role default. A value a decoder cannot read raises (:class:`DecodeError`, or the
``ValueError`` of the parse: no wrapper costs a call per value); the source then sets the row
aside on the dead-letter topic instead of stopping.

>>> decoder_for(1700)(b"12345678901234567890.0123456789")
'12345678901234567890.0123456789'
>>> decoder_for(1184)(b"2024-01-02 03:04:05.5+02")
'2024-01-02T01:04:05.500000Z'
>>> decoder_for(1007)(b'{1,NULL,3}')
[1, None, 3]
>>> decoder_for(1082)(b"0044-03-15 BC"), decoder_for(1186)(b"P1DT-1H")
(-735160, 82800000000)
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from rowcast.core.errors import DecodeError

Decoder = Callable[[bytes], Any]

_DAY_US = 86_400_000_000
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SPECIAL_FLOATS = {b"NaN": "NaN", b"Infinity": "Infinity", b"-Infinity": "-Infinity"}
_INFINITIES = {b"infinity": "infinity", b"-infinity": "-infinity"}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8")


def _int(raw: bytes) -> int:
    return int(raw)


def _float(raw: bytes) -> float | str:
    special = _SPECIAL_FLOATS.get(raw)
    return special if special is not None else float(raw)


def _bool(raw: bytes) -> bool:
    return raw == b"t"


_BYTEA_ESCAPE = re.compile(rb"\\(\\|[0-7]{3})")


def _bytea(raw: bytes) -> str:
    """``bytea_output=hex`` (``\\x00ff``), or ``escape`` (``\\000\\377\\\\A``)."""
    if raw.startswith(b"\\x"):
        data = bytes.fromhex(raw[2:].decode("ascii"))
    else:
        data = _BYTEA_ESCAPE.sub(
            lambda m: b"\\" if m[1] == b"\\" else bytes((int(m[1], 8),)), raw)
    return base64.b64encode(data).decode("ascii")


def _int64(value: int, what: str, text: str) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise DecodeError(f"{what} {text!r} is out of range: its microseconds do not fit in "
                          "64 bits")
    return value


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date, any year (astronomical: 0 = 1 BC)."""
    if not (1 <= month <= 12 and 1 <= day <= 31):
        raise DecodeError(f"not a calendar date: {year}-{month}-{day}")
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """The inverse of :func:`_days_from_civil`."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


_DATE = re.compile(r"(\d+)-(\d{2})-(\d{2})")


def _ymd_days(text: str, bc: bool) -> int:
    match = _DATE.fullmatch(text)
    if match is None:
        raise DecodeError(f"not an ISO date {text!r} (DateStyle must be ISO)")
    year = int(match[1])
    return _days_from_civil(1 - year if bc else year, int(match[2]), int(match[3]))


def _date(raw: bytes) -> int | str:
    if raw in _INFINITIES:
        return _INFINITIES[raw]
    text = raw.decode("ascii")
    bc = text.endswith(" BC")
    return _ymd_days(text[:-3] if bc else text, bc)


def _time_us(text: str) -> int:
    hh, mm, rest = text.split(":")
    seconds, _, fraction = rest.partition(".")
    return ((int(hh) * 60 + int(mm)) * 60 + int(seconds)) * 1_000_000 + int(fraction.ljust(6, "0"))


def _time(raw: bytes) -> int:
    return _time_us(raw.decode("ascii"))


_OFFSET = re.compile(r"([+-])(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?$")


def _split_offset(text: str) -> tuple[str, int]:
    """``'03:04:05.5+05:30'`` → (``'03:04:05.5'``, +19800 seconds)."""
    match = _OFFSET.search(text)
    if match is None:
        raise DecodeError(f"no UTC offset in {text!r}")
    sign, hh, mm, ss = match.groups()
    seconds = int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0)
    return text[:match.start()], -seconds if sign == "-" else seconds


def _timetz(raw: bytes) -> str:
    clock, offset = _split_offset(raw.decode("ascii"))
    us = (_time_us(clock) - offset * 1_000_000) % _DAY_US
    seconds, micros = divmod(us, 1_000_000)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micros:06d}Z"


def _local_us(text: str, bc: bool) -> int:
    """``'YYYY-MM-DD HH:MM:SS[.f]'`` (any number of year digits) → µs since 1970, unbounded."""
    day, sep, clock = text.partition(" ")
    if not sep:
        raise DecodeError(f"not an ISO timestamp {text!r} (DateStyle must be ISO)")
    return _ymd_days(day, bc) * _DAY_US + _time_us(clock)


def _timestamp(raw: bytes) -> int | str:
    if raw in _INFINITIES:
        return _INFINITIES[raw]
    text = raw.decode("ascii")
    bc = text.endswith(" BC")
    return _int64(_local_us(text[:-3] if bc else text, bc), "timestamp", text)


def _timestamptz(raw: bytes) -> str:
    # the source's session runs in TimeZone=UTC (slot.SESSION_SETTINGS), so the server prints
    # 'YYYY-MM-DD HH:MM:SS[.f]+00' and the ISO text is slicing (measured 4.2 -> ~0.5 µs): only
    # 4-digit years AD (java's formatter prints other years differently, see below)
    if raw[-3:] == b"+00" and raw[10:11] == b" " and raw[4:5] == b"-" and len(raw) >= 22:
        text = raw.decode("ascii")
        if len(text) == 22:
            return f"{text[:10]}T{text[11:19]}.000000Z"
        if text[19] == "." and len(text) <= 29 and text[20:-3].isdigit():
            return f"{text[:10]}T{text[11:19]}.{text[20:-3].ljust(6, '0')}Z"
    if raw in _INFINITIES:
        return _INFINITIES[raw]
    text = raw.decode("ascii")
    bc = text.endswith(" BC")  # after the offset: '0044-03-15 12:00:00+00 BC'
    local, offset = _split_offset(text[:-3] if bc else text)
    us = _int64(_local_us(local, bc) - offset * 1_000_000, "timestamptz", text)
    days, day_us = divmod(us, _DAY_US)
    year, month, day = _civil_from_days(days)
    seconds, micros = divmod(day_us, 1_000_000)
    # as java.time's ISO_OFFSET_DATE_TIME (Debezium's ZonedTimestamp) prints years beyond 4 digits
    yyyy = f"{year:04d}" if 0 <= year <= 9999 else f"+{year}" if year > 0 else f"-{-year:04d}"
    return (f"{yyyy}-{month:02d}-{day:02d}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
            f"{seconds % 60:02d}.{micros:06d}Z")


_MONTH_US = 2_629_800_000_000  # 365.25 / 12 days, Debezium's MicroDuration.DAYS_PER_MONTH_AVG
_HOUR_US = 3_600_000_000
_UNIT_US = {"year": 12 * _MONTH_US, "mon": _MONTH_US, "day": _DAY_US, "hour": _HOUR_US,
            "min": 60_000_000, "sec": 1_000_000}
_POSTGRES_PART = re.compile(
    r"(?P<n>[+-]?\d+(?:\.\d+)?) (?P<unit>year|mon|day|hour|min|sec)s?"
    r"|(?P<clock>[+-]?\d+:\d{2}:\d{2}(?:\.\d+)?)")
_ISO_PART = re.compile(r"(?P<n>[+-]?\d+(?:\.\d+)?)(?P<unit>[YMDHS])")
_ISO = re.compile(r"P(?:[+-]?\d+[YMD])*(?:T(?:[+-]?\d+(?:\.\d+)?[HMS])+)?")
_SQL_PART = re.compile(
    r"(?P<ym>(?P<ys>[+-]?)(?P<y>\d+)-(?P<m>\d+))|(?P<clock>[+-]?\d+:\d{2}:\d{2}(?:\.\d+)?)"
    r"|(?P<day>[+-]?\d+)")


def _seconds_us(text: str) -> int:
    """``'-6.789'`` → -6789000, exactly (no float)."""
    negative = text.startswith("-")
    whole, _, fraction = text.lstrip("+-").partition(".")
    us = int(whole) * 1_000_000 + int(fraction[:6].ljust(6, "0"))
    return -us if negative else us


def _clock_us(clock: str) -> int:
    negative = clock.startswith("-")
    us = _time_us(clock.lstrip("+-"))
    return -us if negative else us


def _interval_postgres(text: str) -> int:
    """``postgres`` (``1 year 2 mons -3 days +04:05:06.5``) and ``postgres_verbose``
    (``@ 1 year 2 mons -3 days 4 hours 5 mins 6.5 secs ago``)."""
    total = 0
    for match in _POSTGRES_PART.finditer(text):
        if match["clock"]:
            total += _clock_us(match["clock"])
        elif match["unit"] == "sec":
            total += _seconds_us(match["n"])
        else:
            total += int(match["n"]) * _UNIT_US[match["unit"]]
    return -total if text.endswith(" ago") else total


def _interval_iso(text: str) -> int:
    """``iso_8601``: ``P1Y2M-3DT4H5M6.5S``, each field with its own sign."""
    total = 0
    date_part, _, time_part = text[1:].partition("T")
    for part, units in ((date_part, {"Y": "year", "M": "mon", "D": "day"}),
                        (time_part, {"H": "hour", "M": "min", "S": "sec"})):
        for match in _ISO_PART.finditer(part):
            unit = units[match["unit"]]
            total += (_seconds_us(match["n"]) if unit == "sec"
                      else int(match["n"]) * _UNIT_US[unit])
    return total


def _interval_sql(text: str) -> int:
    """``sql_standard``: ``1-2 3 4:05:06``; a single leading ``-`` negates every field unless
    the fields carry signs of their own (mixed signs: ``+1-2 -3 +4:05:06``)."""
    parts = text.split()
    signed = sum(p[0] in "+-" for p in parts)
    negate_all = parts[0].startswith("-") and signed == 1
    total = 0
    for part in parts:
        if negate_all:
            part = part.lstrip("-")
        match = _SQL_PART.fullmatch(part)
        if match is None:
            raise DecodeError(f"unsupported interval {text!r}")
        if match["ym"]:
            months = int(match["y"]) * 12 + int(match["m"])
            total += (-months if match["ys"] == "-" else months) * _MONTH_US
        elif match["clock"]:
            total += _clock_us(match["clock"])
        else:
            total += int(match["day"]) * _DAY_US
    return -total if negate_all else total


def _interval(raw: bytes) -> int:
    """Microseconds, a month as 365.25 / 12 days; reads every ``IntervalStyle``."""
    text = raw.decode("ascii")
    if text.startswith("P"):
        if not _ISO.fullmatch(text):
            raise DecodeError(f"unsupported interval {text!r}")
        total = _interval_iso(text)
    elif text == "@ 0":  # postgres_verbose's zero
        total = 0
    elif any(c.isalpha() for c in text):  # postgres or postgres_verbose: units spelled out
        if _POSTGRES_PART.sub("", text).replace("@", "").replace("ago", "").strip():
            raise DecodeError(f"unsupported interval {text!r}")
        total = _interval_postgres(text)
    else:  # sql_standard, or a bare clock ('04:05:06'), which every style prints alike
        total = _interval_sql(text)
    return _int64(total, "interval", text)


def _parse_array(text: str, element: Decoder) -> list:
    """Postgres array text format: braces, commas, double-quoted elements, ``NULL``."""
    if text.startswith("["):  # explicit bounds, e.g. '[0:1]={1,2}'
        text = text[text.index("=") + 1:]
    pos = 0

    def parse_list() -> list:
        nonlocal pos
        if text[pos] != "{":
            raise DecodeError(f"bad array literal {text!r}")
        pos += 1
        items: list = []
        if text[pos] == "}":
            pos += 1
            return items
        while True:
            if text[pos] == "{":
                items.append(parse_list())
            elif text[pos] == '"':
                pos += 1
                chars = []
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    chars.append(text[pos])
                    pos += 1
                pos += 1
                items.append(element("".join(chars).encode()))
            else:
                end = pos
                while text[end] not in ",}":
                    end += 1
                word = text[pos:end]
                items.append(None if word == "NULL" else element(word.encode()))
                pos = end
            if text[pos] == ",":
                pos += 1
            elif text[pos] == "}":
                pos += 1
                return items

    try:
        return parse_list()
    except IndexError:
        raise DecodeError(f"truncated array literal {text!r}") from None


_SCALARS: dict[int, Decoder] = {
    16: _bool, 17: _bytea, 18: _text, 19: _text, 20: _int, 21: _int, 23: _int, 25: _text,
    26: _int, 114: _text, 700: _float, 701: _float, 1042: _text, 1043: _text, 1082: _date,
    1083: _time, 1114: _timestamp, 1184: _timestamptz, 1186: _interval, 1266: _timetz,
    1700: _text, 2950: _text, 3802: _text,
}
_ARRAYS: dict[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21, 1007: 23, 1009: 25, 1016: 20, 1021: 700,
    1022: 701, 1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184,
    1187: 1186, 1270: 1266, 1231: 1700, 2951: 2950, 199: 114, 3807: 3802, 1028: 26,
}


def decoder_for(type_oid: int) -> Decoder:
    """The decoder of one column type; unknown types (enums, domains, extensions) stay text."""
    scalar = _SCALARS.get(type_oid)
    if scalar is not None:
        return scalar
    element_oid = _ARRAYS.get(type_oid)
    if element_oid is not None:
        element = _SCALARS[element_oid]
        return lambda raw: _parse_array(raw.decode("utf-8"), element)
    return _text


def decode_value(type_oid: int, raw: bytes | None) -> Any:
    return None if raw is None else decoder_for(type_oid)(raw)


# Decoders the CDC source's per-relation row function writes inline (no call per value):
# each expression gives exactly what the decoder returns for ``{v}``, and raises as it does.
_INLINE: dict[Decoder, str] = {
    _int: "int({v})",
    _text: "{v}.decode('utf-8')",
    _bool: "{v} == b't'",
}


def inline_expression(decoder: Decoder, value: str) -> str | None:
    """Python source computing ``decoder(value)`` without calling it, when there is one."""
    template = _INLINE.get(decoder)
    return None if template is None else template.format(v=value)
