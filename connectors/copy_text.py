"""COPY's text format, written directly: what the sink and the learner's checkpoint send.

Why not psycopg's ``Copy.write_row``: it adapts each value in Python (~5 µs a row for the
sink's eleven columns); lines joined here cost ~1 µs, and the server parses COPY text for less
than an INSERT of the same rows from JSON (``rowcast.connectors.pending_labels``)."""

from __future__ import annotations

import datetime

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def copy_text(value: str) -> str:
    r"""A string as a field of COPY's text format (backslash, tab and line breaks escaped).

    >>> copy_text('plain'), copy_text('a\tb\\c\nd')
    ('plain', 'a\\tb\\\\c\\nd')
    """
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r"))
    return value


def timestamp_text(at_us: int) -> str:
    """Microseconds since the epoch as a ``timestamptz`` literal, exactly (integer arithmetic;
    ``to_timestamp(us / 1e6)`` goes through a float).

    >>> timestamp_text(1_700_000_000_000_001)
    '2023-11-14T22:13:20.000001+00:00'
    """
    return (_EPOCH + datetime.timedelta(microseconds=at_us)).isoformat()
