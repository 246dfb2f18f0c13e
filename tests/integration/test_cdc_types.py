"""Every type the CDC source promises, streamed from the real server and checked against what a
``SELECT`` of the same row returns (psycopg's own values, converted here by hand to Debezium's
encoding, independently of :mod:`rowcast.connectors.pgtypes`)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import orjson

from rowcast.connectors.cdc_source import UNAVAILABLE, CdcSource
from rowcast.connectors.kafka_clients import make_producer
from rowcast.connectors.lag import slot_lag
from tests.helpers.kafka_reading import afters, drain_rows
from tests.helpers.tables import watch
from tests.helpers.waiting import wait_until

COLUMNS = {
    "id": "int PRIMARY KEY", "i2": "smallint", "i8": "bigint", "r4": "real", "f8": "double precision",
    "n": "numeric(30,10)", "t": "text", "vc": "varchar(20)", "c": "char(4)", "b": "boolean",
    "d": "date", "tm": "time", "ts": "timestamp", "tz": "timestamptz", "iv": "interval",
    "u": "uuid", "j": "json", "jb": "jsonb", "by": "bytea", "ai": "int[]", "at": "text[]",
    "af": "float8[]", "mood": "{enum}", "nothing": "int", "big": "text",
}
VALUES = {
    "id": "1", "i2": "-32768", "i8": "9223372036854775807", "r4": "1.5", "f8": "-2.25e-10",
    "n": "12345678901234567890.0123456789", "t": "'héllo, \"world\"'", "vc": "'varying'",
    "c": "'ab'", "b": "false", "d": "'1969-07-20'", "tm": "'23:59:58.123456'",
    "ts": "'2024-02-29 12:34:56.789012'", "tz": "'2024-01-02 03:04:05.5+05:30'",
    "iv": "'3 days 04:05:06.7'", "u": "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "j": "'{\"k\": [1, null], \"s\": \"x\"}'", "jb": "'{\"b\": 2, \"a\": {\"c\": true}}'",
    "by": "'\\x00ff10'", "ai": "'{1,NULL,-3}'", "at": r"""'{"a,b",NULL,"\"q\""}'""",
    "af": "'{1.5,-0.25}'", "mood": "'happy'", "nothing": "NULL",
    "big": "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)",
}


def debezium(value: object) -> object:
    """psycopg's Python value → Debezium's JSON encoding (the reference the stream must match)."""
    if isinstance(value, bool | int | float | str | dict) or value is None:
        return value  # dict: json/jsonb, compared parsed below
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:  # timestamp: epoch microseconds
            return (value - datetime(1970, 1, 1)) // timedelta(microseconds=1)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, date):
        return (value - date(1970, 1, 1)).days
    if isinstance(value, time):
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list):
        return [debezium(v) for v in value]
    raise AssertionError(f"no reference encoding for {type(value)}")


def test_every_type_round_trips_to_what_select_returns(settings, pg_conn):
    enum = f"mood_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')")
    ddl = ", ".join(f"{name} {kind.format(enum=enum)}" for name, kind in COLUMNS.items())
    table, topic = watch(settings, pg_conn, f"({ddl})")

    pg_conn.execute(f"INSERT INTO public.{table} ({', '.join(VALUES)}) VALUES ({', '.join(VALUES.values())})")
    pg_conn.execute(f"UPDATE public.{table} SET t = 'changed' WHERE id = 1")  # big stays TOASTed
    producer = make_producer(settings)
    source = CdcSource(settings, pg_conn, producer)
    wait_until(lambda: source.poll_once() == 0 and
               slot_lag(pg_conn, settings.slot_name).behind_bytes < 1_000_000, timeout_s=30)
    producer.close()
    inserted, updated = afters(drain_rows(settings, topic, 2))

    cur = pg_conn.execute(f"SELECT * FROM public.{table} WHERE id = 1")
    names = [c.name for c in cur.description]
    row = dict(zip(names, cur.fetchone(), strict=True))
    expected = {name: debezium(value) for name, value in row.items()}
    expected["t"] = VALUES["t"].strip("'")  # the insert's text, before the update
    # json and jsonb travel as their text (Debezium's io.debezium.data.Json): compare parsed
    for name in ("j", "jb"):
        assert orjson.loads(inserted.pop(name)) == expected.pop(name)
    assert inserted == expected
    assert len(inserted["big"]) > 8000  # really out of line
    assert updated["big"] == UNAVAILABLE  # unchanged TOAST is marked, never turned into NULL
    assert updated["t"] == "changed" and updated["nothing"] is None
