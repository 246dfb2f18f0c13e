"""Capture pgoutput bytes from a real server into fixtures for tests/unit/test_pgoutput.py.

Usage: python tests/data/pgoutput/capture.py postgresql://postgres@127.0.0.1:PORT/DB
(needs wal_level=logical). Writes captured.json (peek output, hex) and expected.json (the rows'
columns as SELECT returns them as text, with their type OIDs) next to this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg

HERE = Path(__file__).parent
SLOT, PUB = "capture_slot", "capture_pub"

SETUP = """
DROP TABLE IF EXISTS capture_types, capture_full;
DROP TYPE IF EXISTS capture_mood;
CREATE TYPE capture_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE capture_types (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, f4 real, f8 double precision,
    num numeric(40, 10), txt text, vc varchar(20), ch char(3), flag boolean, d date, t time,
    ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb,
    raw bytea, ints integer[], texts text[], mood capture_mood, big text
);
CREATE TABLE capture_full (id int PRIMARY KEY, note text);
ALTER TABLE capture_full REPLICA IDENTITY FULL;
"""

ROWS = """
INSERT INTO capture_types VALUES
 (1, -32768, 2147483647, 1.5, -2.25e-300, 123456789012345678901234567890.0123456789, 'héllo ☃',
  'varchar', 'ab', true, '1969-07-20', '23:59:59.999999', '12:00:00+05:30',
  '1999-12-31 23:59:59.123456', '2024-02-29 12:34:56.5-08', '1 year 2 mons -3 days 04:05:06.5',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2]}', '{"b": {"c": null}}', '\\x00ff10',
  '{1,NULL,3}', '{"a,b","q\\"x",NULL,plain}', 'happy', repeat('toast me ', 20000)),
 (2, NULL, NULL, 'NaN', '-Infinity', 'NaN', NULL, NULL, NULL, false, 'infinity', NULL, NULL,
  '-infinity', NULL, '00:00:00', NULL, NULL, NULL, NULL, '{}', '{{a,b},{c,d}}', 'sad', NULL)
"""

CHANGES = [
    "UPDATE capture_types SET txt = 'changed' WHERE id = 1",  # big stays unchanged TOAST
    "INSERT INTO capture_full VALUES (1, 'before')",
    "UPDATE capture_full SET note = 'after' WHERE id = 1",
    "DELETE FROM capture_types WHERE id = 2",
    "TRUNCATE capture_full",
    "SELECT pg_logical_emit_message(true, 'rowcast', 'hello')",
]


def main(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s", (SLOT,))
        conn.execute(f"DROP PUBLICATION IF EXISTS {PUB}")
        conn.execute(SETUP)
        conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE capture_types, capture_full")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
        conn.execute(ROWS)
        expected = {
            "timezone": conn.execute("SHOW TimeZone").fetchone()[0],
            "columns": [list(r) for r in conn.execute(
                "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = "
                "'capture_types'::regclass AND attnum > 0 ORDER BY attnum")],
            "rows": [[None if v is None else str(v) for v in r] for r in conn.execute(
                "SELECT id::text, i2::text, i4::text, f4::text, f8::text, num::text, txt, vc, "
                "ch, boolout(flag)::text, d::text, t::text, ttz::text, ts::text, tstz::text, "
                "iv::text, u::text, j::text, jb::text, raw::text, ints::text, texts::text, "
                "mood::text, big FROM capture_types ORDER BY id")],
        }
        for statement in CHANGES:
            conn.execute(statement)
        captured = [{"lsn": r[0], "xid": r[1], "hex": r[2]} for r in conn.execute(
            "SELECT lsn::text, xid::text::bigint, encode(data, 'hex') FROM "
            "pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
            "'publication_names', %s, 'messages', 'true')", (SLOT, PUB))]
        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        conn.execute(f"DROP PUBLICATION {PUB}")
        conn.execute("DROP TABLE capture_types, capture_full; DROP TYPE capture_mood")
    (HERE / "captured.json").write_text(json.dumps(captured, indent=0))
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False))
    print(f"captured {len(captured)} messages")


if __name__ == "__main__":
    main(sys.argv[1])
