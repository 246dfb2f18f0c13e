"""The canonical primary key of a row: one encoding for Kafka, ``rowcast.predictions`` and SQL.

A row's key is a JSON object ``{column: value}`` over the table's primary-key columns (in key
order), each value encoded exactly as the same column is in the envelope's ``after`` (the
Debezium encoding of :mod:`rowcast.connectors.pgtypes`, ``decimal.handling.mode=string``).
Why that one and not ``to_jsonb(column)``: it is what Debezium itself puts in the key, so
rowcast's topics stay Debezium-compatible; it is what the streams compare when a later UPDATE
or a labels-table row names a scored row (they key by the row's decoded values), so nothing
else has to translate; and it never loses precision (``numeric`` stays the text Postgres
printed). Every place that builds or matches a key uses it:

- the CDC source and the snapshot/backfill reads put :func:`encode_key` of it on Kafka;
- the scorer copies it into the prediction, the sink stores :func:`stored_key` of it in
  ``rowcast.predictions.pk`` (``jsonb``);
- SQL computes the same ``jsonb`` from a table row with the expression
  ``rowcast._key_sql(table, alias)`` returns (``connectors/sql/deploy.sql``; one expression
  per type, independent of the session's TimeZone, DateStyle and bytea_output). The
  ``<name>_scored`` view, ``rowcast reconcile`` and ``rowcast backfill`` (missing only) join on it.

What each key column type becomes:

=========================  ===========================================================
type                       key value
=========================  ===========================================================
smallint, int, bigint, oid JSON integer (as before: ``{"id": 1}``)
real, double precision     JSON number; ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
boolean                    true / false
numeric                    string, as Postgres prints it: ``"1.50"``,
                           ``"100000000000000000000"`` (1e20), ``"-7.125"``
text, varchar              string (as before: ``{"name": "héllo"}``)
char(n)                    string with its blank padding (``"ab  "`` for char(4))
uuid                       string, lower case: ``"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"``
date                       integer days since 1970-01-01 (``"infinity"``, ``"-infinity"``)
timestamp                  integer µs since 1970-01-01 00:00 (or the infinities)
timestamptz                string in UTC, 6 fractional digits:
                           ``"2024-01-02T01:04:05.500000Z"`` (or the infinities)
time / timetz              integer µs since midnight / ``"HH:MM:SS.ffffffZ"`` in UTC
interval                   integer µs, a month as 365.25/12 days
bytea                      base64 string
enum, domain, jsonb, other the type's output text, as a string
=========================  ===========================================================

Dates and timestamps of any year PostgreSQL stores are supported, BC ones included (a
``timestamptz`` key prints its year as java.time does: ``"-0043-03-15T12:00:00.500000Z"`` for
44 BC, ``"+12345-..."`` past 9999; SQL computes the same with ``rowcast._iso_utc``). Not
supported as key columns (the view and reconcile would not find their rows): arrays, domains
over date/time types in a non-ISO DateStyle.

jsonb compares numbers by value and objects regardless of key order, so ``{"id": 1}`` stored
by the sink equals ``jsonb_build_object('id', 1)`` computed in SQL.

>>> encode_key({"id": 1})
b'{"id":1}'
>>> encode_key({"name": "b'c", "day": 19723})  # a composite key keeps the key order
b'{"name":"b\\'c","day":19723}'
>>> stored_key({"name": "a", "day": 19723})  # the text written to rowcast.predictions.pk
'{"day":19723,"name":"a"}'
>>> key_of(("k",), {"k": "1.50", "x": 2.0})
{'k': '1.50'}
>>> from decimal import Decimal
>>> encode_key({"k": Decimal("1.50")})  # a Decimal keeps its digits, as numeric's text
b'{"k":"1.50"}'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson


def key_of(names: Iterable[str], row: Mapping[str, Any]) -> dict[str, Any]:
    """The key of a decoded row (``after``/``before`` of an envelope), in key-column order."""
    return {name: row.get(name) for name in names}


_join = b"".join  # two parts make a new, right-sized bytes object


def json_default(value: Any) -> Any:
    """orjson's ``default`` for row values: a ``Decimal`` as numeric's text."""
    # orjson has no exact Decimal encoding; numeric keys are their Postgres text, which is
    # what str(Decimal) gives for a value parsed from that text
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a key value type")


def encode_key(key: Mapping[str, Any]) -> bytes:
    """The Kafka record key: the key columns in primary-key order, as Debezium writes it."""
    return orjson.dumps(key, default=json_default)


def stored_key(key: Mapping[str, Any]) -> str:
    """The JSON text stored in ``rowcast.predictions.pk`` (sorted, so replays write identical
    text; jsonb would normalise the order anyway)."""
    return orjson.dumps(key, default=json_default, option=orjson.OPT_SORT_KEYS).decode()


def key_id(key: Mapping[str, Any]) -> bytes:
    """A row's identity in memory: its key as sorted JSON bytes (so the column order a message
    happened to carry does not matter), for maps and sets.

    Copied out of orjson's buffer, because these are kept: ``orjson.dumps`` (3.12 and later)
    returns its output in an allocation of at least 4 KiB, whatever the length, and the
    learner keeps every key it saw since its last checkpoint (``learner_checkpoint_every``,
    thousands of labels: ~20-45 MB when it was 5,000, issue 15). The copy costs ~90 ns.

    >>> key_id({"b": 1, "a": "x"})
    b'{"a":"x","b":1}'
    """
    return _join((orjson.dumps(key, option=orjson.OPT_SORT_KEYS), b""))
