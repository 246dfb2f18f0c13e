"""Values the source cannot turn into an event never stop it (issue 13, item 1).

Every value PostgreSQL can store either decodes or sends its whole row to ``<prefix>.dlq`` (stage
``source``, with table, key, column, raw text and reason), while the rest of its transaction,
the other tables and the slot keep moving. Also: database defaults for ``IntervalStyle``,
``DateStyle``, ``bytea_output``, ``TimeZone`` and ``extra_float_digits`` do not change what the
source emits (it pins its own session settings).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

import psycopg

from rowcast.connectors.slot import current_wal_lsn
from rowcast.core.dead_letter import DeadLetter
from tests.helpers.kafka_reading import afters, drain, drain_rows
from tests.helpers.sources import run_source_past
from tests.helpers.tables import watch

DAY_US = 86_400_000_000
MONTH_US = 2_629_800_000_000  # Debezium's MicroDuration: a month is 365.25 / 12 days

COLUMNS = ("(id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, iv interval, by bytea, "
           "n numeric, f float8, mood {enum}, moods {enum}[], dom {domain}, big text)")


def _days(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def _us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# id -> (column values as SQL literals, what the event's ``after`` holds for them, or the column
# that must send the row to the dead letters)
GOOD = {
    1: ({"d": "'2024-02-29'", "ts": "'2024-02-29 12:00:00.25'", "tz": "'2024-02-29 12:00:00+02'",
         "iv": "'1 day 02:00:00'", "by": r"'\x00ff5c'", "n": "1.50", "f": "0.1234567890123456",
         "mood": "'happy'", "moods": "'{sad,happy}'", "dom": "7"},
        {"d": _days(date(2024, 2, 29)), "ts": _us(datetime(2024, 2, 29, 12, 0, 0, 250000)),
         "tz": "2024-02-29T10:00:00.000000Z", "iv": DAY_US + 2 * 3_600_000_000, "by": "AP9c",
         "n": "1.50", "f": 0.1234567890123456, "mood": "happy", "moods": "{sad,happy}",
         "dom": "7"}),
    2: ({"d": "'10000-01-01'", "tz": "'12345-06-07 08:09:10.5+00'"},
        {"d": 2_932_897, "tz": "+12345-06-07T08:09:10.500000Z"}),
    3: ({"d": "'0044-03-15 BC'", "ts": "'0044-03-15 12:00:00 BC'",
         "tz": "'0044-03-15 12:00:00+00 BC'"},
        {"d": -735_160, "ts": -735_160 * DAY_US + 12 * 3_600_000_000,
         "tz": "-0043-03-15T12:00:00.000000Z"}),
    4: ({"d": "'infinity'", "ts": "'-infinity'", "tz": "'infinity'"},
        {"d": "infinity", "ts": "-infinity", "tz": "infinity"}),
    5: ({"d": "'5874897-12-31'", "ts": "'4713-01-01 00:00:00 BC'", "n": "'NaN'",
         "f": "'-Infinity'"},
        {"d": 2_145_042_905, "ts": -2_440_550 * DAY_US, "n": "NaN", "f": "-Infinity"}),
    6: ({"iv": "'-1 year -2 mons +3 days -04:05:06.789'", "n": "'Infinity'"},
        {"iv": -14 * MONTH_US + 3 * DAY_US - 14_706_789_000, "n": "Infinity"}),
}
BAD = {  # id -> (column values, the column the letter names, its raw text, a word of the reason)
    10: ({"ts": "'294276-12-31 23:59:59'"}, "ts", "294276-12-31 23:59:59", "range"),  # > int64 µs
    11: ({"iv": "'178000000 years'"}, "iv", "178000000 years", "range"),
    12: ({"big": "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 70000) g)"},
         "big", None, "large"),  # 2.2 MB: over the broker's message.max.bytes (1 MB by default)
}


def _insert(conn: psycopg.Connection, table: str, rows: dict) -> None:
    with conn.transaction():  # good and bad rows in one transaction
        for i, (values, *_) in sorted(rows.items()):
            names = ", ".join(["id", *values])
            conn.execute(f"INSERT INTO public.{table} ({names}) "
                         f"VALUES ({', '.join([str(i), *values.values()])})")


def _make_types(conn: psycopg.Connection) -> tuple[str, str]:
    enum, domain = f"mood_{uuid.uuid4().hex[:6]}", f"posint_{uuid.uuid4().hex[:6]}"
    conn.execute(f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')")
    conn.execute(f"CREATE DOMAIN {domain} AS int CHECK (VALUE > 0)")
    return enum, domain


def _letters(settings, table: str, expected: int) -> dict[int, DeadLetter]:
    letters = [DeadLetter.decode(r.value) for r in drain(settings, settings.dlq_topic, expected)]
    mine = [le for le in letters if le.context.get("table") == table]
    return {int(le.context["key"]["id"]): le for le in mine}


def test_bad_values_go_to_the_dead_letters_and_everything_else_flows(settings, pg_conn):
    enum, domain = _make_types(pg_conn)
    table_a, topic_a = watch(settings, pg_conn, COLUMNS.format(enum=enum, domain=domain))
    table_b, topic_b = watch(settings, pg_conn, "(id int PRIMARY KEY, note text)")
    _insert(pg_conn, table_a, {**GOOD, **BAD})
    pg_conn.execute(f"UPDATE public.{table_a} SET ts = '2000-01-01' WHERE id = 10")  # now fine
    before_b = current_wal_lsn(pg_conn)
    pg_conn.execute(f"INSERT INTO public.{table_b} VALUES (1, 'still flowing')")

    run_source_past(settings, pg_conn, before_b)

    assert afters(drain_rows(settings, topic_b, 1)) == \
        [{"id": 1, "note": "still flowing"}]
    events = [r.value for r in drain_rows(settings, topic_a, len(GOOD) + 1)]
    assert [(e["op"], e["after"]["id"]) for e in events] == \
        [("c", i) for i in sorted(GOOD)] + [("u", 10)]
    for event in events[:-1]:
        _, expected = GOOD[event["after"]["id"]]
        got = {k: v for k, v in event["after"].items() if k in expected}
        assert got == expected, event["after"]["id"]
    assert events[-1]["after"]["ts"] == _us(datetime(2000, 1, 1))

    letters = _letters(settings, table_a, len(BAD))
    assert sorted(letters) == sorted(BAD)
    for i, (_, column, raw, word) in BAD.items():
        letter = letters[i]
        assert letter.stage == "source"
        ctx = letter.context
        assert (ctx["schema"], ctx["table"], ctx["key"], ctx["column"]) == \
            ("public", table_a, {"id": i}, column)
        assert word in ctx["reason"] and word in letter.error
        if raw is None:  # too large: the letter carries the start of it, bounded
            assert 0 < len(ctx["raw"]) <= 4096 and 0 < len(letter.value or b"") <= 128 * 1024
        else:
            assert ctx["raw"] == raw


def test_database_defaults_for_output_styles_do_not_change_the_events(settings, pg_conn):
    enum, domain = _make_types(pg_conn)
    table, topic = watch(settings, pg_conn, COLUMNS.format(enum=enum, domain=domain))
    db = pg_conn.info.dbname
    styles = {"IntervalStyle": "iso_8601", "DateStyle": "SQL, DMY", "bytea_output": "escape",
              "TimeZone": "Asia/Kolkata", "extra_float_digits": "-3"}
    try:
        for name, value in styles.items():
            pg_conn.execute(f"ALTER DATABASE {db} SET {name} = '{value}'")
        with psycopg.connect(settings.postgres_dsn.get_secret_value(), autocommit=True) as conn:
            assert conn.execute("SHOW IntervalStyle").fetchone()[0] == "iso_8601"
            _insert(conn, table, GOOD)
            past = current_wal_lsn(conn)
            conn.execute(f"INSERT INTO public.{table} (id, iv) VALUES (99, '2 mons 3 days')")
            run_source_past(settings, conn, past, pg_conn)
    finally:
        for name in styles:
            pg_conn.execute(f"ALTER DATABASE {db} RESET {name}")
    events = afters(drain_rows(settings, topic, len(GOOD) + 1))
    assert [e["id"] for e in events] == [*sorted(GOOD), 99]
    for after in events[:-1]:
        _, expected = GOOD[after["id"]]
        assert {k: v for k, v in after.items() if k in expected} == expected, after["id"]
    assert events[-1]["iv"] == 2 * MONTH_US + 3 * DAY_US
