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
``"-infinity"``: no integer would be honest.

>>> decoder_for(1700)(b"12345678901234567890.0123456789")
'12345678901234567890.0123456789'
>>> decoder_for(1184)(b"2024-01-02 03:04:05.5+02")
'2024-01-02T01:04:05.500000Z'
>>> decoder_for(1007)(b'{1,NULL,3}')
[1, None, 3]
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from rowcast.core.errors import DecodeError

Decoder = Callable[[bytes], Any]

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
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


def _bytea(raw: bytes) -> str:
    if not raw.startswith(b"\\x"):
        raise DecodeError("bytea not in hex format (bytea_output must be 'hex')")
    return base64.b64encode(bytes.fromhex(raw[2:].decode("ascii"))).decode("ascii")


def _date(raw: bytes) -> int | str:
    if raw in _INFINITIES:
        return _INFINITIES[raw]
    if raw.endswith(b" BC"):
        raise DecodeError(f"BC dates are not supported: {raw.decode()}")
    return (date.fromisoformat(raw.decode("ascii")) - _EPOCH_DATE).days


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


def _naive(text: str) -> datetime:
    if text.endswith(" BC"):
        raise DecodeError(f"BC timestamps are not supported: {text}")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise DecodeError(f"unsupported timestamp {text!r} (years beyond 9999?)") from None


def _timestamp(raw: bytes) -> int | str:
    if raw in _INFINITIES:
        return _INFINITIES[raw]
    delta = _naive(raw.decode("ascii")) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _timestamptz(raw: bytes) -> str:
    if raw in _INFINITIES:
        return _INFINITIES[raw]
    text, offset = _split_offset(raw.decode("ascii"))
    moment = _naive(text).replace(tzinfo=timezone(timedelta(seconds=offset))).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_INTERVAL_PART = re.compile(
    r"(?P<n>[+-]?\d+) (?P<unit>year|mon|day)s?|(?P<clock>[+-]?\d+:\d{2}:\d{2}(?:\.\d+)?)")
_MONTH_US = 2_629_800_000_000  # 365.25 / 12 days, Debezium's MicroDuration.DAYS_PER_MONTH_AVG
_UNIT_US = {"year": 12 * _MONTH_US, "mon": _MONTH_US, "day": _DAY_US}


def _interval(raw: bytes) -> int:
    """Postgres's default ``IntervalStyle=postgres`` output, e.g. ``1 year 2 mons -3 days 04:05:06.5``."""
    text = raw.decode("ascii")
    total = 0
    for match in _INTERVAL_PART.finditer(text):
        if match["clock"]:
            clock = match["clock"]
            negative = clock.startswith("-")
            us = _time_us(clock.lstrip("+-"))
            total += -us if negative else us
        else:
            total += int(match["n"]) * _UNIT_US[match["unit"]]
    if total == 0 and text not in ("00:00:00", "0"):
        raise DecodeError(f"unsupported interval {text!r} (IntervalStyle must be 'postgres')")
    return total


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
