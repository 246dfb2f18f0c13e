"""A decoder for pgoutput, PostgreSQL's built-in logical decoding output (protocol version 1).

Pure functions over the bytes in the ``data`` column of ``pg_logical_slot_peek_binary_changes``.
One message per call; the layout is big-endian with NUL-terminated UTF-8 strings:

====  =======================================================================================
B     final LSN (Int64), commit time (Int64 µs since 2000-01-01), xid (**Int32**)
C     flags (Int8), commit LSN, end LSN (Int64), commit time (Int64)
R     relation OID (Int32), schema, table, replica identity (Byte), column count (Int16),
      per column: flags (Int8, 1 = part of the key), name, type OID (Int32), typmod (Int32)
I     relation OID, ``N``, tuple
U     relation OID, optional ``K`` or ``O`` + old tuple, ``N``, new tuple
D     relation OID, ``K`` or ``O``, old tuple
T     relation count (Int32), options (Int8: 1 cascade, 2 restart identity), OIDs
M     flags (Int8, 1 = transactional), LSN, prefix, length (Int32), content
O     origin LSN, name;  Y: type OID, schema, name
====  =======================================================================================

A tuple is a column count (Int16) then, per column, ``n`` (NULL), ``u`` (unchanged TOAST value,
no data), ``t`` (Int32 length + text) or ``b`` (Int32 length + binary).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rowcast.core.errors import DecodeError

PG_EPOCH_OFFSET_US = 946_684_800_000_000  # 2000-01-01 minus 1970-01-01, in microseconds


class _Unchanged:
    """Marks a TOASTed value the update did not touch: the server did not send it."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST = _Unchanged()


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column sent in binary format (only with the ``binary`` option, which rowcast leaves off)."""

    data: bytes


Value = bytes | BinaryValue | _Unchanged | None
TupleData = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time_us: int


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    table: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old: TupleData | None
    old_kind: str | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: TupleData
    old_kind: str


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class TypeMessage:
    oid: int
    schema: str
    name: str


Message = (Begin | Commit | Relation | Insert | Update | Delete | Truncate | LogicalMessage
           | Origin | TypeMessage)

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">bQQq")
_COLUMN_TAIL = struct.Struct(">Ii")


class _Reader:
    __slots__ = ("data", "pos", "kind")

    def __init__(self, data: bytes, kind: str) -> None:
        self.data = data
        self.pos = 1
        self.kind = kind

    def fail(self, what: str) -> DecodeError:
        return DecodeError(f"pgoutput {self.kind!r} message: {what} at offset {self.pos} "
                           f"of {len(self.data)} bytes")

    def unpack(self, fmt: struct.Struct) -> tuple:
        try:
            values = fmt.unpack_from(self.data, self.pos)
        except struct.error:
            raise self.fail(f"truncated (needs {fmt.size} bytes)") from None
        self.pos += fmt.size
        return values

    def byte(self) -> str:
        if self.pos >= len(self.data):
            raise self.fail("truncated")
        value = chr(self.data[self.pos])
        self.pos += 1
        return value

    def string(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail("unterminated string")
        value = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return value

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise self.fail(f"truncated value of {n} bytes")
        value = self.data[self.pos:end]
        self.pos = end
        return value

    def tuple_data(self) -> TupleData:
        """The hot loop of the source (one call per row image): plain locals and slicing, no
        method call per column (measured: 2.4 -> ~1.3 µs per 3-column Insert)."""
        data = self.data
        size = len(data)
        pos = self.pos
        if pos + 2 > size:
            raise self.fail("truncated (needs 2 bytes)")
        count = _I16.unpack_from(data, pos)[0]
        pos += 2
        values: list[Value] = []
        append = values.append
        i32 = _I32.unpack_from
        for _ in range(count):
            if pos >= size:
                self.pos = pos
                raise self.fail("truncated tuple")
            kind = data[pos]
            if kind == 0x74 or kind == 0x62:  # 't', 'b'
                if pos + 5 > size:
                    self.pos = pos + 1
                    raise self.fail("truncated (needs 4 bytes)")
                length = i32(data, pos + 1)[0]
                start = pos + 5
                pos = start + length
                if length < 0 or pos > size:
                    self.pos = start
                    raise self.fail(f"truncated value of {length} bytes")
                append(data[start:pos] if kind == 0x74 else BinaryValue(data[start:pos]))
            elif kind == 0x6E:  # 'n'
                append(None)
                pos += 1
            elif kind == 0x75:  # 'u'
                append(UNCHANGED_TOAST)
                pos += 1
            else:
                self.pos = pos + 1
                raise self.fail(f"unknown tuple column kind {chr(kind)!r}")
        self.pos = pos
        return tuple(values)

    def done(self, message: Message) -> Message:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected trailing bytes")
        return message


def _begin(r: _Reader) -> Message:
    final_lsn, commit_time, xid = r.unpack(_BEGIN)
    return r.done(Begin(final_lsn, commit_time + PG_EPOCH_OFFSET_US, xid))


def _commit(r: _Reader) -> Message:
    flags, commit_lsn, end_lsn, commit_time = r.unpack(_COMMIT)
    return r.done(Commit(flags, commit_lsn, end_lsn, commit_time + PG_EPOCH_OFFSET_US))


def _relation(r: _Reader) -> Message:
    (oid,) = r.unpack(_U32)
    schema, table = r.string(), r.string()
    identity = r.byte()
    (count,) = r.unpack(_I16)
    columns = []
    for _ in range(count):
        (flags,) = r.unpack(_I8)
        name = r.string()
        type_oid, typmod = r.unpack(_COLUMN_TAIL)
        columns.append(Column(name, type_oid, typmod, bool(flags & 1)))
    return r.done(Relation(oid, schema, table, identity, tuple(columns)))


def _expect(r: _Reader, wanted: str) -> None:
    got = r.byte()
    if got != wanted:
        raise r.fail(f"expected {wanted!r}, found {got!r}")


def _insert(r: _Reader) -> Message:
    (oid,) = r.unpack(_U32)
    _expect(r, "N")
    return r.done(Insert(oid, r.tuple_data()))


def _update(r: _Reader) -> Message:
    (oid,) = r.unpack(_U32)
    kind = r.byte()
    old = old_kind = None
    if kind in ("K", "O"):
        old_kind, old = kind, r.tuple_data()
        kind = r.byte()
    if kind != "N":
        raise r.fail(f"expected 'N', found {kind!r}")
    return r.done(Update(oid, old, old_kind, r.tuple_data()))


def _delete(r: _Reader) -> Message:
    (oid,) = r.unpack(_U32)
    kind = r.byte()
    if kind not in ("K", "O"):
        raise r.fail(f"expected 'K' or 'O', found {kind!r}")
    return r.done(Delete(oid, r.tuple_data(), kind))


def _truncate(r: _Reader) -> Message:
    (count,) = r.unpack(_I32)
    (options,) = r.unpack(_I8)
    oids = tuple(r.unpack(_U32)[0] for _ in range(count))
    return r.done(Truncate(oids, bool(options & 1), bool(options & 2)))


def _message(r: _Reader) -> Message:
    (flags,) = r.unpack(_I8)
    (lsn,) = r.unpack(_U64)
    prefix = r.string()
    (length,) = r.unpack(_I32)
    return r.done(LogicalMessage(bool(flags & 1), lsn, prefix, r.take(length)))


def _origin(r: _Reader) -> Message:
    (lsn,) = r.unpack(_U64)
    return r.done(Origin(lsn, r.string()))


def _type(r: _Reader) -> Message:
    (oid,) = r.unpack(_U32)
    return r.done(TypeMessage(oid, r.string(), r.string()))


_DECODERS = {"B": _begin, "C": _commit, "R": _relation, "I": _insert, "U": _update,
             "D": _delete, "T": _truncate, "M": _message, "O": _origin, "Y": _type}


def decode_message(data: bytes) -> Message:
    """Decode one pgoutput message; :class:`DecodeError` names the message type and offset."""
    if not data:
        raise DecodeError("empty pgoutput message")
    kind = chr(data[0])
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise DecodeError(f"unknown pgoutput message type {kind!r}")
    return decoder(_Reader(data, kind))

