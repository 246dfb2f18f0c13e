"""Change batches: many row changes of one table and partition in one Kafka record (issue 15).

Why: one Kafka record per row costs every process its per-record overhead per row (faust
90-130 µs per event, a kafka-python send 31-35 µs), which capped rowcast near 2,000 rows/s.
A batch of up to a few hundred rows costs that overhead once, so the per-row cost is the
decoding and scoring itself.

What stays as with one record per row, so every guarantee built on it holds:

- **Partitions.** A row goes to the partition its canonical key (:func:`rowcast.core.keys.
  encode_key`) hashes to with Kafka's default partitioner (murmur2), the partition a per-row
  Debezium envelope with that key would go to; so per-key order holds and a topic may switch
  format without moving a key. A batch holds rows of one partition only, in the order the
  source read them (commit order).
- **Positions per row.** Each row keeps its change LSN, its transaction's commit LSN, order in
  the transaction, xid and commit time: :meth:`ChangeBatch.events` gives exactly the
  :class:`~rowcast.core.envelope.ChangeEvent` list the per-row envelopes would parse to.
- **Values.** ``after``/``before`` values are those of the Debezium envelope (the encoding of
  :mod:`rowcast.connectors.pgtypes`), column-wise.
- **Watermarks** stay their own records (see :data:`~rowcast.core.envelope.WATERMARK_KEY`), sent
  after the batches they cover.

The record: key :data:`BATCH_KEY`, header :data:`BATCH_HEADER` = the format version (``b"1"``),
value (JSON)::

    {"v": 1, "source": {"name", "db", "schema", "table"}, "ts_us": int,
     "columns": [name, ...], "key_columns": [name, ...],
     "op": "ccud...",                      # one character per row
     "lsn": [...], "commit_lsn": [...], "tx_order": [...], "xid": [...], "commit_us": [...],
     "after":  [[value of column 0 per row], ...] or null,   # null: no row has an after image
     "before": [[...], ...] or null,       # rows without that image hold null in every column
     "has_after": "1101", "has_before": "0010",  # which rows have each image
     "old_key": {"row index": {key}}}      # rows created by a primary-key change

A change topic written by a real Debezium connector (or ``ROWCAST_SOURCE_FORMAT=debezium``)
keeps one envelope per row; consumers tell the two apart by the header.

>>> batch = ChangeBatch(prefix="rowcast", db="app", schema="public", table="t",
...                     columns=("id", "x"), key_columns=("id",))
>>> batch.add("c", None, {"id": 1, "x": 0.5}, lsn=100, commit_lsn=120, tx_order=1, xid=7,
...           commit_us=1_700_000_000_000_000)
>>> batch.add("u", {"id": 1, "x": 0.5}, {"id": 1, "x": 2.0}, lsn=130, commit_lsn=140,
...           tx_order=1, xid=8, commit_us=1_700_000_000_000_100)
>>> events = ChangeBatch.decode(batch.encode(now_us=1)).events(origin="rowcast.public.t:0")
>>> [(e.op, e.key, e.after, e.before, e.order) for e in events]
... # doctest: +NORMALIZE_WHITESPACE
[('c', {'id': 1}, {'id': 1, 'x': 0.5}, None, (120, 100, 1)),
 ('u', {'id': 1}, {'id': 1, 'x': 2.0}, {'id': 1, 'x': 0.5}, (140, 130, 1))]
>>> events[1].source.commit_us, events[1].source.tx_id, events[1].stream_id
(1700000000000100, 8, 'rowcast.public.t:0')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from rowcast.core.envelope import ChangeEvent, SourceInfo
from rowcast.core.errors import DecodeError
from rowcast.core.keys import json_default

VERSION = 1
BATCH_KEY = b'{"__rowcast":"batch"}'  # JSON, as every key on the change topics
BATCH_HEADER = "rowcast.batch"  # its value: the format version, as decimal text
MAX_ROWS = 500  # rows per record, unless the source is told otherwise
MAX_BYTES = 512 * 1024  # encoded size a source aims to stay under (values are estimated)


@dataclass
class ChangeBatch:
    """Row changes of one table on one partition, kept column-wise as they are added."""

    prefix: str
    db: str
    schema: str
    table: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    ops: list[str] = field(default_factory=list)
    lsn: list[int] = field(default_factory=list)
    commit_lsn: list[int] = field(default_factory=list)
    tx_order: list[int] = field(default_factory=list)
    xid: list[int | None] = field(default_factory=list)
    commit_us: list[int] = field(default_factory=list)
    after: list[dict[str, Any] | None] = field(default_factory=list)
    before: list[dict[str, Any] | None] = field(default_factory=list)
    old_key: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, *,
            lsn: int, commit_lsn: int, tx_order: int, xid: int | None, commit_us: int,
            old_key: dict[str, Any] | None = None) -> None:
        """One row change (its images hold every column of :attr:`columns`)."""
        if old_key is not None:
            self.old_key[len(self.ops)] = old_key
        self.ops.append(op)
        self.before.append(before)
        self.after.append(after)
        self.lsn.append(lsn)
        self.commit_lsn.append(commit_lsn)
        self.tx_order.append(tx_order)
        self.xid.append(xid)
        self.commit_us.append(commit_us)

    def _columns_of(self, images: list[dict[str, Any] | None]) -> list[list[Any]] | None:
        if all(image is None for image in images):
            return None
        return [[None if image is None else image.get(name) for image in images]
                for name in self.columns]

    def encode(self, now_us: int) -> bytes:
        """The record's value. Raises ``orjson.JSONEncodeError`` for a value JSON cannot
        hold (the source checks each row before adding it)."""
        return orjson.dumps({
            "v": VERSION,
            "source": {"name": self.prefix, "db": self.db, "schema": self.schema,
                       "table": self.table},
            "ts_us": now_us,
            "columns": list(self.columns),
            "key_columns": list(self.key_columns),
            "op": "".join(self.ops),
            "lsn": self.lsn, "commit_lsn": self.commit_lsn, "tx_order": self.tx_order,
            "xid": self.xid, "commit_us": self.commit_us,
            "after": self._columns_of(self.after),
            "before": self._columns_of(self.before),
            "has_after": "".join("0" if a is None else "1" for a in self.after),
            "has_before": "".join("0" if b is None else "1" for b in self.before),
            "old_key": {str(i): k for i, k in self.old_key.items()},
        }, default=json_default)

    @classmethod
    def decode(cls, value: bytes) -> ChangeBatch:
        """Raises :class:`DecodeError` with the reason for anything that is not a batch."""
        try:
            doc = orjson.loads(value)
            if doc.get("v") != VERSION:
                raise ValueError(f"unknown change batch version {doc.get('v')!r}")
            source = doc["source"]
            columns = tuple(doc["columns"])
            ops = list(doc["op"])
            n = len(ops)
            batch = cls(str(source.get("name", "")), str(source.get("db", "")),
                        str(source["schema"]), str(source["table"]), columns,
                        tuple(doc["key_columns"]), ops, doc["lsn"], doc["commit_lsn"],
                        doc["tx_order"], doc["xid"], doc["commit_us"],
                        _rows(columns, doc["after"], doc["has_after"], n),
                        _rows(columns, doc["before"], doc["has_before"], n),
                        {int(i): dict(k) for i, k in (doc.get("old_key") or {}).items()})
            for name in ("lsn", "commit_lsn", "tx_order", "xid", "commit_us"):
                if len(getattr(batch, name)) != n:
                    raise ValueError(f"'{name}' has {len(getattr(batch, name))} values "
                                     f"for {n} rows")
            if any(op not in "cudr" for op in ops):
                raise ValueError("an op is not one of c, u, d, r")
            return batch
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodeError(f"not a change batch: {exc}") from None

    def events(self, origin: str = "") -> list[ChangeEvent]:
        """The rows as the change events their per-row envelopes would parse to."""
        # one pass over the columns, no call per row but the two constructors (a worker
        # runs this for every row it scores: 2.8-3.0 -> 2.6-2.7 µs per row, bench.worker parse)
        prefix, db, schema, table, names = (self.prefix, self.db, self.schema, self.table,
                                            self.key_columns)
        old_key = self.old_key
        out = []
        append = out.append
        for i, (op, before, after, lsn, xid, commit_us, commit_lsn, tx_order) in enumerate(zip(
                self.ops, self.before, self.after, self.lsn, self.xid, self.commit_us,
                self.commit_lsn, self.tx_order, strict=True)):
            image = after if after is not None else before
            assert image is not None
            append(ChangeEvent(op, before, after,
                               SourceInfo(prefix, db, schema, table, lsn, xid, commit_us,
                                          "false", commit_lsn),
                               {name: image.get(name) for name in names}, None, origin,
                               (commit_lsn, lsn, tx_order),
                               old_key.get(i) if old_key else None))
        return out


def _rows(columns: tuple[str, ...], values: list[list[Any]] | None, present: str, n: int
          ) -> list[dict[str, Any] | None]:
    if len(present) != n:
        raise ValueError(f"row flags for {len(present)} rows, ops for {n}")
    if values is None:
        if "1" in present:
            raise ValueError("rows flagged with an image the batch does not hold")
        return [None] * n
    if len(values) != len(columns) or any(len(v) != n for v in values):
        raise ValueError("column values do not match the columns and rows")
    rows = [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)] \
        if columns else [{} for _ in range(n)]
    return [row if flag == "1" else None for row, flag in zip(rows, present, strict=True)]


def is_batch(headers: object) -> bool:
    """Whether a record's headers (faust's dict or Kafka's list of pairs) mark a batch."""
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    return any(name == BATCH_HEADER for name, _ in items)
