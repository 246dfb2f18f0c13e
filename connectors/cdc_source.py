"""The CDC source: pgoutput changes from a logical slot, published as Debezium envelopes.

The loop, and why it cannot lose a row:

1. ``peek`` whole transactions from the slot's confirmed position (nothing is consumed);
2. decode each message and ``send`` its envelope, keyed by primary key, to
   ``<prefix>.<schema>.<table>``;
3. ``flush`` the producer and check every send was acknowledged;
4. only then ``advance`` the slot to the last commit's end LSN, and remember that LSN.

A crash before 4 replays the batch (at-least-once; the sink's upsert is idempotent). The slot's
position is persisted by the server only at checkpoints, so after a server crash it may hand out
transactions again: those at or below the remembered commit LSN are dropped here.

Polling is adaptive: while changes flow the slot is peeked again at once; when idle, the cheap
``pg_current_wal_insert_lsn()`` is polled and the (costlier) peek runs only once WAL has moved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from kafka import KafkaProducer

from rowcast.connectors import heartbeat, pgoutput, pgtypes, slot
from rowcast.connectors.kafka_clients import AckedSends
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.source_position import load_position, save_position
from rowcast.core import metrics
from rowcast.core.envelope import UNAVAILABLE, SourceInfo, build_value, encode_key
from rowcast.core.errors import DecodeError, SourceError
from rowcast.core.settings import Settings

log = logging.getLogger(__name__)



@dataclass
class RelationInfo:
    """A decoded Relation message and what the loop derives from it once."""

    relation: pgoutput.Relation
    topic: str
    names: tuple[str, ...]
    decoders: tuple[Callable[[bytes], Any], ...]
    key_names: tuple[str, ...]

    def row(self, values: tuple) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, decode, raw in zip(self.names, self.decoders, values, strict=True):
            if raw is None:
                out[name] = None
            elif raw is pgoutput.UNCHANGED_TOAST:
                out[name] = UNAVAILABLE
            else:
                out[name] = decode(raw)
        return out

    def key_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return {k: row.get(k) for k in self.key_names}


@dataclass
class _Txn:
    xid: int
    commit_us: int
    final_lsn: int
    order: int = 0
    skip: bool = False


class CdcSource:
    """Streams one publication's changes to Kafka; ``run`` until ``stop`` is set."""

    def __init__(self, settings: Settings, conn: psycopg.Connection, producer: KafkaProducer,
                 on_published: Callable[[int, int], None] | None = None) -> None:
        self.settings = settings
        self.conn = conn
        self.producer = producer
        self.relations: dict[int, RelationInfo] = {}
        self.db = conn.info.dbname
        self.last_commit_lsn = load_position(conn, settings.slot_name)
        self._on_published = on_published
        self._txn: _Txn | None = None
        self._pending = AckedSends(producer, "change events (the slot was not advanced)")
        self._saved_lsn = self.last_commit_lsn
        self._last_nudge = time.monotonic()
        self._wal_after_nudge = 0
        self._unconfirmed = 0  # acknowledged by Kafka, slot not yet advanced past them
        self._last_beat = 0.0
        self._nudge_ok = True

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.001
        wal_seen = -1
        while not stop.is_set():
            self._maybe_beat()
            wal_now = slot.current_wal_lsn(self.conn)
            if wal_now == wal_seen:
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.settings.source_idle_backoff_max_s)
                continue
            if self.poll_once() == 0:
                wal_seen = wal_now  # nothing new up to here: wait for WAL to move again
            else:
                backoff_s = 0.001
        self._save_position()

    def poll_once(self) -> int:
        """One peek → publish → ack → advance round; returns the number of events published."""
        self._nudge_restart_lsn()  # before ``flushed``: this round's advance can then use it
        flushed = slot.current_flush_lsn(self.conn)
        advance_to = None
        seen, published, last_lsn = 0, 0, 0
        every = self.settings.source_ack_every
        with slot.stream_changes(self.conn, self.settings.slot_name,
                                 self.settings.publication_name,
                                 self.settings.source_max_changes) as changes:
            for change in changes:
                seen, last_lsn = seen + 1, change.lsn
                end_lsn = self._handle(change)
                if end_lsn is not None:
                    advance_to = end_lsn
                    if self._unconfirmed + len(self._pending) >= every:
                        published += self._checkpoint(end_lsn)  # a boundary: confirm so far
                        advance_to = None
                elif len(self._pending) >= 4 * every:  # inside a huge transaction
                    self._await_acks()  # bounded memory; the slot advances at its commit
        if advance_to is not None:
            published += self._checkpoint(advance_to)
        elif self._txn is None and not self._pending:
            # nothing, or only non-transactional messages (heartbeats, other apps'
            # pg_logical_emit_message), after the last confirmed transaction: let that WAL go
            if seen < self.settings.source_max_changes:
                self._skip_irrelevant_wal(flushed)
            elif seen:
                slot.advance(self.conn, self.settings.slot_name, last_lsn)
        return published

    def _checkpoint(self, lsn: int) -> int:
        """Wait for Kafka's acks, remember ``lsn``, then advance the slot to it.

        Remembered first: killed in between, the restarted source drops these already-published
        transactions rather than publishing them twice. Done every ``source_ack_every`` events
        at a transaction boundary, so a kill replays at most that many.
        """
        self._await_acks()
        published, self._unconfirmed = self._unconfirmed, 0
        metrics.SOURCE_EVENTS.inc(published)
        metrics.SOURCE_CHECKPOINTS.inc()
        self.last_commit_lsn = max(self.last_commit_lsn, lsn)
        self._save_position()
        slot.advance(self.conn, self.settings.slot_name, lsn)
        if self._on_published:
            self._on_published(published, lsn)
        return max(published, 1)

    def _skip_irrelevant_wal(self, flushed: int) -> None:
        """Nothing to publish up to ``flushed`` (read before the peek, which decodes up to the
        flush position): every transaction committed before it touched no watched table, so
        the slot can let that WAL go. Without this, writes to other tables pin WAL forever."""
        if flushed > slot.confirmed_lsn(self.conn, self.settings.slot_name):
            slot.advance(self.conn, self.settings.slot_name, flushed)

    def _maybe_beat(self) -> None:
        every = self.settings.heartbeat_interval_s
        now = time.monotonic()
        if every > 0 and now - self._last_beat >= every:
            heartbeat.beat(self.conn, self.settings.slot_name)
            self._last_beat = now
            lag = slot_lag(self.conn, self.settings.slot_name)
            if lag is not None:
                metrics.SLOT_BEHIND_BYTES.set(lag.behind_bytes)
                metrics.SLOT_BEHIND_SECONDS.set(lag.behind_seconds)
                metrics.SLOT_RETAINED_BYTES.set(lag.retained_bytes)

    def _save_position(self) -> None:
        """After every acknowledged batch, with ``synchronous_commit = off``: the row is a hint
        that only ever prevents replays (lost in a server crash, the slot replays and downstream
        is idempotent), so it never waits for a WAL flush."""
        if self.last_commit_lsn > self._saved_lsn:
            save_position(self.conn, self.settings.slot_name, self.last_commit_lsn)
            self._saved_lsn = self.last_commit_lsn

    def _nudge_restart_lsn(self) -> None:
        """At most every ``source_restart_nudge_s``, and only when WAL grew since the last one:
        an idle server is left idle (the nudge itself writes a little WAL)."""
        now = time.monotonic()
        if self._nudge_ok and now - self._last_nudge >= self.settings.source_restart_nudge_s:
            wal_now = slot.current_wal_lsn(self.conn)
            if wal_now <= self._wal_after_nudge:
                return
            self._last_nudge = now
            nudged = slot.log_running_xacts(self.conn, self.settings.slot_name)
            self._wal_after_nudge = slot.current_wal_lsn(self.conn)
            if not nudged:
                self._nudge_ok = False
                log.warning("no free replication slot to log running transactions: the slot's "
                            "restart LSN will move only every ~15 s, and each poll re-reads that "
                            "WAL; raise max_replication_slots by one")

    def _await_acks(self) -> int:
        """Wait until Kafka acknowledged every pending send; returns how many there were."""
        count = self._pending.wait()
        self._unconfirmed += count
        return count

    def _handle(self, change: slot.RawChange) -> int | None:
        message = pgoutput.decode_message(change.data)
        if isinstance(message, pgoutput.Begin):
            self._txn = _Txn(message.xid, message.commit_time_us, message.final_lsn,
                             skip=message.final_lsn <= self.last_commit_lsn)
        elif isinstance(message, pgoutput.Commit):
            self._txn = None
            return message.end_lsn
        elif isinstance(message, pgoutput.Relation):
            self._remember(message)
        elif (isinstance(message, pgoutput.Insert | pgoutput.Update | pgoutput.Delete)
              and self._txn is not None and not self._txn.skip):
            self._publish_row_change(message, change.lsn)
        return None

    def _remember(self, rel: pgoutput.Relation) -> None:
        """Relation messages come again at each peek and after DDL: always overwrite.

        The event key is the primary key, as in Debezium, not the replica identity the message
        flags: with ``REPLICA IDENTITY FULL`` every column is flagged. Looked up once per shape.
        """
        known = self.relations.get(rel.oid)
        if known is not None and known.relation == rel:
            return
        try:
            keys = slot.table_key_columns(self.conn, rel.schema, rel.table)
        except SourceError:  # no primary key (or gone): fall back to the replica identity
            keys = tuple(c.name for c in rel.columns if c.is_key)
        self.relations[rel.oid] = RelationInfo(
            relation=rel,
            topic=self.settings.source_topic(rel.schema, rel.table),
            names=tuple(c.name for c in rel.columns),
            decoders=tuple(pgtypes.decoder_for(c.type_oid) for c in rel.columns),
            key_names=keys,
        )

    def _publish_row_change(self, message: Any, lsn: int) -> None:
        info = self.relations.get(message.relation_oid)
        if info is None:
            raise DecodeError(f"change for relation {message.relation_oid} before its Relation")
        if isinstance(message, pgoutput.Insert):
            self._emit(info, "c", None, info.row(message.new), lsn)
        elif isinstance(message, pgoutput.Update):
            after = info.row(message.new)
            before = info.row(message.old) if message.old is not None else None
            if before is not None and info.key_of(before) != info.key_of(after):
                # the primary key changed: as Debezium does, the old key is deleted (with its
                # tombstone) and the new one created, so keyed consumers forget the old key
                self._emit(info, "d", before, None, lsn)
                self._emit(info, "c", None, after, lsn)
            else:
                self._emit(info, "u", before, after, lsn)
        else:
            self._emit(info, "d", info.row(message.old), None, lsn)

    def _emit(self, info: RelationInfo, op: str, before: dict | None, after: dict | None,
              lsn: int) -> None:
        assert self._txn is not None
        keyed = after if after is not None else before
        assert keyed is not None
        key = encode_key(info.key_of(keyed))
        self._txn.order += 1
        rel = info.relation
        source = SourceInfo(self.settings.topic_prefix, self.db, rel.schema, rel.table, lsn,
                            self._txn.xid, self._txn.commit_us, commit_lsn=self._txn.final_lsn)
        value = build_value(op=op, before=before, after=after, source=source,
                            tx_order=self._txn.order, now_us=time.time_ns() // 1000)
        self._send(info.topic, key, orjson.dumps(value))
        if op == "d":
            self._send(info.topic, key, None)  # tombstone: compacted topics forget the key

    def _send(self, topic: str, key: bytes, value: bytes | None) -> None:
        self._pending.send(topic, key, value)
