"""The pgoutput decoder on bytes captured from a real PostgreSQL 15 (tests/data/pgoutput), plus
property tests through an encoder written here from the protocol documentation."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rowcast.connectors import pgoutput as po
from rowcast.connectors.pgtypes import decoder_for
from rowcast.core.errors import DecodeError
from rowcast.core.lsn import format_lsn, parse_lsn

DATA = Path(__file__).parents[1] / "data" / "pgoutput"
CAPTURED = json.loads((DATA / "captured.json").read_text())
EXPECTED = json.loads((DATA / "expected.json").read_text())
MESSAGES = [po.decode_message(bytes.fromhex(m["hex"])) for m in CAPTURED]


def of_type(kind: type) -> list:
    return [m for m in MESSAGES if isinstance(m, kind)]


def test_message_sequence_is_what_the_server_sent() -> None:
    assert "".join(bytes.fromhex(m["hex"])[:1].decode() for m in CAPTURED) == \
        "BYRIICBUCBRICBUCBDCBRTCBMC"


def test_begin_xid_is_int32_and_matches_the_server() -> None:
    begins = [(m, c) for m, c in zip(MESSAGES, CAPTURED, strict=True) if isinstance(m, po.Begin)]
    assert [b.xid for b, _ in begins] == [c["xid"] for _, c in begins]


def test_commits_are_monotonic_and_match_their_begin() -> None:
    commits = of_type(po.Commit)
    assert [c.commit_lsn for c in commits] == [b.final_lsn for b in of_type(po.Begin)]
    assert all(a.end_lsn < b.commit_lsn for a, b in zip(commits, commits[1:], strict=False))
    assert all(c.end_lsn > c.commit_lsn for c in commits)
    # commit time is µs since the Unix epoch: in this decade
    assert all(1_600_000_000_000_000 < c.commit_time_us < 2_000_000_000_000_000 for c in commits)


def test_relation_describes_columns_and_key() -> None:
    rel = next(r for r in of_type(po.Relation) if r.table == "capture_types")
    assert rel.schema == "public" and rel.replica_identity == "d"
    assert [(c.name, c.type_oid) for c in rel.columns] == [tuple(c) for c in EXPECTED["columns"]]
    assert [c.name for c in rel.columns if c.is_key] == ["id"]
    full = next(r for r in of_type(po.Relation) if r.table == "capture_full")
    assert full.replica_identity == "f"
    assert of_type(po.TypeMessage)[0].name == "capture_mood"


def _debezium(oid: int, text: str | None):
    return None if text is None else decoder_for(oid)(text.encode())


def test_inserted_values_decode_to_what_select_returns() -> None:
    rel = next(r for r in of_type(po.Relation) if r.table == "capture_types")
    inserts = [m for m in of_type(po.Insert) if m.relation_oid == rel.oid]
    for insert, expected_row in zip(inserts, EXPECTED["rows"], strict=True):
        for column, raw, text in zip(rel.columns, insert.new, expected_row, strict=True):
            decoded = None if raw is None else decoder_for(column.type_oid)(raw)
            assert decoded == _debezium(column.type_oid, text), column.name


def test_spot_values_in_debezium_encoding() -> None:
    rel = next(r for r in of_type(po.Relation) if r.table == "capture_types")
    first = of_type(po.Insert)[0]
    row = {c.name: (None if v is None else decoder_for(c.type_oid)(v))
           for c, v in zip(rel.columns, first.new, strict=True)}
    assert row["num"] == "123456789012345678901234567890.0123456789"
    assert row["d"] == -165  # days since 1970-01-01
    assert row["tstz"] == "2024-02-29T20:34:56.500000Z"
    assert row["ttz"] == "06:30:00.000000Z"
    assert row["raw"] == "AP8Q"
    assert row["texts"] == ["a,b", 'q"x', None, "plain"]
    assert row["mood"] == "happy" and row["flag"] is True


def test_update_keeps_unchanged_toast_marked_not_null() -> None:
    update = of_type(po.Update)[0]
    assert update.old is None and update.old_kind is None  # default identity, key unchanged
    assert update.new[-1] is po.UNCHANGED_TOAST
    assert update.new[6] == b"changed"


def test_replica_identity_full_sends_the_old_row() -> None:
    update = of_type(po.Update)[1]
    assert update.old_kind == "O" and update.old == (b"1", b"before")
    assert update.new == (b"1", b"after")


def test_delete_truncate_and_logical_message() -> None:
    delete = of_type(po.Delete)[0]
    assert delete.old_kind == "K" and delete.old[0] == b"2"
    assert all(v is None for v in delete.old[1:])
    truncate = of_type(po.Truncate)[0]
    assert not truncate.cascade and not truncate.restart_identity
    assert len(truncate.relation_oids) == 1
    message = of_type(po.LogicalMessage)[0]
    assert (message.transactional, message.prefix, message.content) == (True, "rowcast", b"hello")


@pytest.mark.parametrize("index", range(len(CAPTURED)))
def test_every_truncation_is_a_decode_error(index: int) -> None:
    data = bytes.fromhex(CAPTURED[index]["hex"])
    for cut in {1, len(data) // 2, len(data) - 1} - {0, len(data)}:
        with pytest.raises(DecodeError, match=r"offset|truncated|unterminated|expected"):
            po.decode_message(data[:cut])


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unknown pgoutput message type"):
        po.decode_message(b"Z\x00")
    with pytest.raises(DecodeError):
        po.decode_message(b"")


# --- property tests through an encoder written from the protocol documentation -------------

def _string(s: str) -> bytes:
    return s.encode() + b"\0"


def _tuple(values) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is po.UNCHANGED_TOAST:
            out += b"u"
        else:
            out += b"t" + struct.pack(">i", len(v)) + v
    return out


names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=20)
values = st.one_of(st.none(), st.just(po.UNCHANGED_TOAST), st.binary(max_size=50))
oids = st.integers(min_value=0, max_value=2**32 - 1)


@given(oids, names, names, st.lists(st.tuples(st.booleans(), names, oids,
                                              st.integers(-(2**31), 2**31 - 1)), max_size=8))
def test_relation_round_trip(oid, schema, table, columns) -> None:
    data = b"R" + struct.pack(">I", oid) + _string(schema) + _string(table) + b"d"
    data += struct.pack(">h", len(columns))
    for key, name, type_oid, typmod in columns:
        data += struct.pack(">b", int(key)) + _string(name) + struct.pack(">Ii", type_oid, typmod)
    rel = po.decode_message(data)
    assert (rel.oid, rel.schema, rel.table) == (oid, schema, table)
    assert [(c.is_key, c.name, c.type_oid, c.type_modifier) for c in rel.columns] == columns


@given(oids, st.lists(values, max_size=10), st.lists(values, max_size=10),
       st.sampled_from([None, "K", "O"]))
def test_insert_update_delete_round_trip(oid, new, old, kind) -> None:
    insert = po.decode_message(b"I" + struct.pack(">I", oid) + b"N" + _tuple(new))
    assert insert == po.Insert(oid, tuple(new))
    old_part = b"" if kind is None else kind.encode() + _tuple(old)
    update = po.decode_message(b"U" + struct.pack(">I", oid) + old_part + b"N" + _tuple(new))
    assert update == po.Update(oid, None if kind is None else tuple(old), kind, tuple(new))
    if kind is not None:
        delete = po.decode_message(b"D" + struct.pack(">I", oid) + kind.encode() + _tuple(old))
        assert delete == po.Delete(oid, tuple(old), kind)


@given(st.integers(0, 2**63 - 1), st.integers(-(2**62), 2**62), st.integers(0, 2**32 - 1))
def test_begin_round_trip(lsn, pg_time, xid) -> None:
    begin = po.decode_message(b"B" + struct.pack(">QqI", lsn, pg_time, xid))
    assert begin == po.Begin(lsn, pg_time + po.PG_EPOCH_OFFSET_US, xid)


@given(st.integers(0, 2**64 - 1))
def test_lsn_text_round_trip(lsn) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn
