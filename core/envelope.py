"""Debezium-compatible change events: build them in the CDC source, parse them in the streams.

The value follows Debezium's PostgreSQL connector with the JSON converter and
``schemas.enable=false``: ``{before, after, source, op, ts_ms, ts_us, transaction}``. Parsing also
accepts the ``{schema, payload}`` wrapping of ``schemas.enable=true``, so the same stream
processors run behind real Debezium. Keys are the primary-key columns as a JSON object.

>>> value = build_value(op="c", before=None, after={"id": 1}, source=SourceInfo(
...     prefix="rowcast", db="app", schema="public", table="t", lsn=100, tx_id=7,
...     commit_us=1_700_000_000_000_000), tx_order=1, now_us=1_700_000_000_001_000)
>>> event = parse_event(b'{"id":1}', orjson.dumps(value))
>>> (event.op, event.after, event.source.lsn, event.source.commit_us)
('c', {'id': 1}, 100, 1700000000000000)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from rowcast import __version__
from rowcast.core import keys
from rowcast.core.errors import DecodeError

OPS = frozenset({"c", "u", "d", "r", "t", "m"})
# Debezium's value for an unchanged TOASTed column of an UPDATE: the server did not send it
UNAVAILABLE = "__debezium_unavailable_value"
# Debezium's header on the create event that follows a primary-key change: the row's old key
OLD_KEY_HEADER = "__debezium.oldkey"
# The CDC source's watermark records (issue 14), one per partition of a change topic: key
# WATERMARK_KEY, null value, header WATERMARK_HEADER = a commit LSN L as decimal text, meaning
# "every change committed at or before L (ChangeEvent.order[0] <= L) is on this partition
# already". Workers never score them and forward them to the learners, which merge the
# partitions in commit order. Not a change: other consumers of the change topics skip records
# with this header (or its key) (the null value also reads as a tombstone of this one key).
WATERMARK_KEY = b'{"__rowcast":"watermark"}'  # JSON, as every key on these topics
WATERMARK_HEADER = "rowcast.watermark"


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention: frozen costs 0.7 us per record (issue 15)
class SourceInfo:
    """Where a change came from: the ``source`` block of the envelope."""

    prefix: str
    db: str
    schema: str
    table: str
    lsn: int
    tx_id: int | None
    commit_us: int
    snapshot: str = "false"
    commit_lsn: int | None = None  # end LSN of the transaction: orders events across transactions

    def to_json(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "connector": "postgresql",
            "name": self.prefix,
            "ts_ms": self.commit_us // 1000,
            "ts_us": self.commit_us,
            "snapshot": self.snapshot,
            "db": self.db,
            "schema": self.schema,
            "table": self.table,
            "txId": self.tx_id,
            "lsn": self.lsn,
            # Debezium's [commit LSN, change LSN] pair, as strings: with total_order it gives
            # every change a position that only grows in commit order (see ChangeEvent.order)
            "sequence": orjson.dumps([str(self.commit_lsn if self.commit_lsn is not None
                                          else self.lsn), str(self.lsn)]).decode(),
        }


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention: frozen costs 0.7 us per record (issue 15)
class ChangeEvent:
    """A parsed change event, whichever connector produced it."""

    op: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: SourceInfo
    key: dict[str, Any] | None
    only_for: str | None = None  # a snapshot event meant for one deployment only
    origin: str = ""  # "topic:partition" it was read from ("" when unknown)
    order: tuple[int, int, int] = (0, 0, 0)  # (commit LSN, change LSN, order in transaction)
    old_key: dict[str, Any] | None = None  # the row's key before a primary-key change

    @property
    def stream_id(self) -> str:
        """The stream in which :attr:`order` only grows: the partition it came from, with
        snapshot reads (``op r``, published apart from the change stream) on their own."""
        return f"{self.origin}:r" if self.op == "r" else self.origin


def build_value(*, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
                source: SourceInfo, tx_order: int, now_us: int) -> dict[str, Any]:
    """The envelope for one change (``tx_order`` counts events within the transaction from 1)."""
    return {
        "before": before,
        "after": after,
        "source": source.to_json(),
        "op": op,
        "ts_ms": now_us // 1000,
        "ts_us": now_us,
        "transaction": {
            "id": f"{source.tx_id}:{source.lsn}",
            "total_order": tx_order,
            "data_collection_order": tx_order,
        },
    }


def encode_key(key: dict[str, Any]) -> bytes:
    """The record key of a change: the row's canonical key (see :mod:`rowcast.core.keys`)."""
    return keys.encode_key(key)


def _commit_us(source: dict[str, Any]) -> int:
    if isinstance(source.get("ts_us"), int):
        return source["ts_us"]
    if isinstance(source.get("ts_ms"), int):
        return source["ts_ms"] * 1000
    raise DecodeError("envelope source has neither ts_us nor ts_ms")


def _order(doc: dict[str, Any], source: dict[str, Any], lsn: int) -> tuple[int, int, int]:
    """Where the change sits in commit order: Debezium's ``sequence`` (``[last commit LSN,
    LSN]``) and ``transaction.total_order``; (0, lsn, 0) when a producer gives neither."""
    commit, total = 0, 0
    sequence = source.get("sequence")
    if isinstance(sequence, str):
        try:
            commit = int(orjson.loads(sequence)[0] or 0)
        except (orjson.JSONDecodeError, IndexError, TypeError, ValueError):
            commit = 0
    txn = doc.get("transaction")
    if isinstance(txn, dict) and isinstance(txn.get("total_order"), int):
        total = txn["total_order"]
    return commit, lsn, total


def parse_event(key: bytes | None, value: bytes | None,
                only_for: str | None = None, origin: str = "",
                old_key: bytes | None = None) -> ChangeEvent | None:
    """Parse one record of a source topic; ``None`` for a tombstone.

    Raises :class:`DecodeError` with the reason for anything that is not a change event.
    """
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
        key_doc = orjson.loads(key) if key else None
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        doc = doc["payload"]
    if isinstance(key_doc, dict) and "payload" in key_doc and "schema" in key_doc:
        key_doc = key_doc["payload"]
    if not isinstance(doc, dict) or doc.get("op") not in OPS:
        raise DecodeError("not a change envelope: no valid 'op'")
    source = doc.get("source")
    if not isinstance(source, dict) or "table" not in source or "lsn" not in source:
        raise DecodeError("change envelope without a source block naming table and lsn")
    for side in ("before", "after"):
        if doc.get(side) is not None and not isinstance(doc[side], dict):
            raise DecodeError(f"envelope '{side}' is not an object")
    info = SourceInfo(
        prefix=str(source.get("name", "")),
        db=str(source.get("db", "")),
        schema=str(source.get("schema", "public")),
        table=str(source["table"]),
        lsn=int(source["lsn"]),
        tx_id=source.get("txId"),
        commit_us=_commit_us(source),
        snapshot=str(source.get("snapshot", "false")),
    )
    try:
        was = orjson.loads(old_key) if old_key else None
    except orjson.JSONDecodeError:
        raise DecodeError("the __debezium.oldkey header is not JSON") from None
    return ChangeEvent(doc["op"], doc.get("before"), doc.get("after"), info,
                       key_doc if isinstance(key_doc, dict) else None, only_for, origin,
                       _order(doc, source, info.lsn), was if isinstance(was, dict) else None)
