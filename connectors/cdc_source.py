"""The CDC source: pgoutput changes from a logical slot, published as change batches or
Debezium envelopes.

What goes on ``<prefix>.<schema>.<table>`` (``source_format``): ``rowcast`` (the default)
groups the row changes of each round into :class:`~rowcast.core.change_batch.ChangeBatch`
records, one per (topic, partition), at most ``source_batch_rows`` rows or about
``source_batch_bytes``; a row goes to the partition Kafka's default partitioner gives its key
(:mod:`rowcast.connectors.partitioning`), rows keep commit order within a partition, and open
batches are sent before acks are awaited, so before any watermark. Why: one record per row cost
31-35 µs of kafka-python per row here, and every consumer its per-record overhead (issue 15;
measured 53k rows/s vs 25k on a 1M-row COPY, ``make bench-cdc``). A key change is a delete of
the old key and a create carrying ``old_key``; no tombstones (batch topics are not compacted).
``debezium`` writes one envelope per row, as Debezium does (with tombstones and the
``__debezium.oldkey`` header). Each row is checked alone (decodes, encodes, fits in Kafka)
before it joins a batch, so a bad row goes to the dead letters alone in either format. Rows are
decoded by a function compiled once per relation (:meth:`RelationInfo.decode`).

The loop, and why it cannot lose a row:

1. read the changes after the slot's confirmed position: pushed by a walsender
   (:class:`~rowcast.connectors.replication.ReplicationStream`, ``source_protocol`` "stream",
   the default) or ``peek``-ed over SQL ("peek"); nothing is consumed either way;
2. decode each message and ``send`` its envelope (or add it to its batch), keyed by primary
   key, to ``<prefix>.<schema>.<table>``;
3. send the open batches, ``flush`` the producer and check every send was acknowledged;
4. only then confirm the last commit's end LSN to the slot (a standby status message, or
   ``pg_replication_slot_advance``), and remember that LSN (in ``rowcast.source_positions``,
   at most every ``source_position_every_s`` and at stop).

A crash before 4 replays the batch (at-least-once; the sink's upsert is idempotent). The slot's
position is persisted by the server only at checkpoints, so after a server crash or restart it
may hand out transactions again: those whose commit record starts before the remembered end LSN
of the last published commit are dropped here (what was published after the last save, at most
``source_position_every_s`` of it, is published again). That LSN is
stored with the cluster's system identifier and forgotten, loudly, when it belongs to another
history (the database restored into another cluster: see :mod:`rowcast.connectors.position_history`).

Rounds are paced (:func:`round_gap`). Streaming, an idle source waits on the walsender's
socket. Peeking, it polls the cheap ``pg_current_wal_flush_lsn()`` and runs the (costlier) peek
only once flushed WAL has moved (the peek decodes only flushed WAL).

A row the source cannot publish never stops it. When one of its values does not decode (a
timestamp whose microseconds overflow 64 bits, an interval beyond ±292271 years, any text a
decoder cannot read) or its event is larger than Kafka accepts, **the whole row change goes to**
``<prefix>.dlq`` (stage ``source``; ``context`` holds schema, table, key, column, the raw text
cut to 1 KiB, the reason, op, LSN and xid; the letter's value holds the row's raw texts, bounded)
in the same acknowledged batch, and the slot advances past it like any other change; the rest of
its transaction and every other table go on. Why not publish the row with the offending value as
text: downstream would score, learn from or store a value of the wrong type. Why not only for
columns some deployment uses (``registry.list_deployments``): the topics are Debezium-style and
may have other consumers, and an event's shape would then depend on which deployments exist
when it was read. Session output styles are pinned in :func:`slot.stream_changes`, so database
or role defaults (``IntervalStyle``, ``DateStyle``, ``bytea_output``, ...) change nothing.

**Keys.** A row is keyed by its primary key as the WAL says it was when the row was written
(the Relation message's flags, :func:`relation_key`), not by the catalog of when it is read: a
source behind a ``RENAME COLUMN id TO order_id`` keys older rows by ``id``. A row with no key
(written while its table had no primary key; under ``REPLICA IDENTITY FULL``, without the
columns of the table's primary key, or with a null in one) goes to the dead letters the same
way (reason ``no_key``): published under an empty or null key, all such rows would collapse
onto one prediction.

**Watermarks** (issue 14; ``source_watermarks``). Kafka orders records per partition only, so
the source tells every partition of every published table's topic how far it is complete: a
record with key :data:`~rowcast.core.envelope.WATERMARK_KEY`, no value and the header
:data:`~rowcast.core.envelope.WATERMARK_HEADER` = ``L`` says every change committed at or
before ``L`` (its ``source.sequence[0]``, the transaction's commit LSN) is on the partition
already. ``L`` is the highest commit LSN of the transactions Kafka acknowledged, sent right after
each wait for acks, to every partition of every published table's topic, so partitions and
tables that got none of those changes advance too (the watermark follows the changes on every
partition); and, while caught up, at most every ``watermark_interval_s``, to topics that have
not had it yet (a newly published table). Sent to a topic only when ``L`` grew, so an idle
pipeline writes none, and only to topics that exist (a watermark never creates a topic with the
broker's default partition count).
Not awaited: a lost watermark is superseded by the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError

from rowcast.connectors import heartbeat, pgoutput, pgtypes, slot
from rowcast.connectors.dead_letters import announce
from rowcast.connectors.kafka_clients import AckedSends, ensure_topics, make_admin
from rowcast.connectors.lag import slot_lag
from rowcast.connectors.partitioning import partition_of
from rowcast.connectors.postgres import connect
from rowcast.connectors.source_position import load_position, save_position
from rowcast.connectors.truncations import record_truncation
from rowcast.core import liveness, metrics
from rowcast.core.change_batch import BATCH_HEADER, BATCH_KEY, VERSION, ChangeBatch
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.envelope import (
    OLD_KEY_HEADER,
    UNAVAILABLE,
    WATERMARK_HEADER,
    WATERMARK_KEY,
    SourceInfo,
    build_value,
    encode_key,
)
from rowcast.core.errors import DecodeError, EventTooLarge, SourceError, UndecodableValue
from rowcast.core.lsn import format_lsn
from rowcast.core.settings import Settings

if TYPE_CHECKING:  # psycopg2 (~4 MB resident) is loaded by the streaming source only
    from rowcast.connectors.replication import ReplicationStream

log = logging.getLogger(__name__)

RAW_LIMIT = 1024  # characters of an offending value a dead letter keeps
LETTER_VALUE_LIMIT = 64 * 1024  # bytes of a set-aside row's raw texts a dead letter keeps
SAFE_EVENT_BYTES = 256 * 1024  # any broker takes this; a larger event checks the topic's limit
NUDGE_EVERY_MAX_S = 15.0  # PostgreSQL logs running transactions about this often by itself
RECORD_OVERHEAD = 512  # bytes Kafka's record batch adds around one key and value
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's message.max.bytes, when the topic's is unknown
STREAM_IDLE_WAIT_S = 0.1  # longest wait on an idle walsender's socket between looks around
TABLES_REFRESH_S = 2.0  # how often the published tables (whose topics get watermarks) are read
TOPICS_RECHECK_S = 10.0  # how often a published table's missing topic is looked for again
BATCH_ROW_BYTES = 96  # a row's positions in a change batch (op, LSNs, order, xid, commit time)
BATCH_CELL_BYTES = 6  # a column's separator, or its null when the row lacks that image
BATCH_HEADERS = [(BATCH_HEADER, str(VERSION).encode())]
_KINDS = {ord("I"): "c", ord("U"): "u", ord("D"): "d"}  # pgoutput row changes -> their op


def _raw_text(raw: pgoutput.Value, limit: int = RAW_LIMIT) -> str | None:
    """A column's bytes as the server printed them, bounded, for a dead letter."""
    if raw is None:
        return None
    if raw is pgoutput.UNCHANGED_TOAST:
        return UNAVAILABLE
    data = raw.data if isinstance(raw, pgoutput.BinaryValue) else raw
    assert isinstance(data, bytes)
    return data[:limit].decode("utf-8", "backslashreplace")


class UnkeyedRow(Exception):
    """A row change no key can be given (see :func:`relation_key`): it goes to the dead
    letters, never onto a change topic under an empty or null key."""


@dataclass(frozen=True, slots=True)
class RelationKey:
    """Which columns key a relation's rows, decided once per Relation message.

    ``names``: the key columns, in primary-key order where known (``()``: none); ``checked``:
    each row must be checked (no key at all, or a key taken from the catalog, whose columns
    rows written before it existed may hold nulls); ``missing``: why there is no key, one line
    naming the table, what the dead letter says."""

    names: tuple[str, ...]
    checked: bool = False
    missing: str | None = None


def relation_key(rel: pgoutput.Relation, primary_key: Callable[[], tuple[str, ...] | None]
                 ) -> RelationKey:
    """The key of ``rel``'s rows, from what the WAL says at that point.

    A Relation message flags its replica identity's columns *as of its WAL position* (and comes
    again after DDL), while the catalog (``primary_key()``: the table's primary key now, or
    None) may have moved on: a source behind a ``RENAME COLUMN id TO order_id`` reads rows whose
    columns are still ``id``. So:

    - default identity (``d``): the flagged columns are the primary key then; in the catalog's
      order when it names the same columns (the record key is in primary-key order, as
      Debezium's), else in table order. None flagged: the table had no primary key when the
      rows were written, and they have none (the catalog's key of now is not theirs);
    - ``FULL`` (``f``; every column flagged) or ``NOTHING`` (``n``; none): the catalog's primary
      key, only if the relation has all its columns (checked per row for nulls);
    - ``USING INDEX`` (``i``): the same, else the flagged index columns.

    ``primary_key`` is called at most once, and not at all when there is nothing to ask."""
    where = f"{rel.schema}.{rel.table}"
    flagged = tuple(c.name for c in rel.columns if c.is_key)
    if rel.replica_identity == "d":
        if not flagged:
            return RelationKey((), True, f"no key: table {where} had no primary key when this "
                                          "row was written (no key column in the WAL's Relation)")
        catalog = primary_key()
        if catalog is not None and sorted(catalog) == sorted(flagged):
            return RelationKey(catalog)
        return RelationKey(flagged)
    catalog = primary_key()
    names = {c.name for c in rel.columns}
    if catalog is not None and all(name in names for name in catalog):
        return RelationKey(catalog, True)
    if rel.replica_identity == "i" and flagged:
        return RelationKey(flagged)
    if catalog is None:
        why = f"table {where} has no primary key (replica identity {rel.replica_identity!r})"
    else:
        absent = ", ".join(repr(n) for n in catalog if n not in names)
        why = (f"table {where}'s primary key column {absent} is not in this row (written "
               "before the key's last change; replica identity "
               f"{rel.replica_identity!r} does not say which columns keyed it then)")
    return RelationKey((), True, f"no key: {why}")


@dataclass
class RelationInfo:
    """A decoded Relation message and what the loop derives from it once."""

    relation: pgoutput.Relation
    topic: str
    names: tuple[str, ...]
    decoders: tuple[Callable[[bytes], Any], ...]
    key_names: tuple[str, ...]
    fast_row: Callable[[tuple], dict[str, Any]] | None = None
    key: RelationKey | None = None  # None: ``key_names``, trusted (no check per row)
    key_checked: bool = False  # :meth:`check_key` must see each row (rare: see RelationKey)

    def __post_init__(self) -> None:
        if self.fast_row is None:
            self.fast_row = _compile_row(self.names, self.decoders)
        if self.key is not None:
            self.key_checked = self.key.checked

    def check_key(self, row: dict[str, Any]) -> None:
        """:class:`UnkeyedRow` unless ``row`` has a key with a value in each column; called
        only when :attr:`key_checked` (keys the WAL names need no check)."""
        if self.key is not None and self.key.missing is not None:
            raise UnkeyedRow(self.key.missing)
        nulls = [name for name in self.key_names if row.get(name) is None]
        if nulls:
            rel = self.relation
            raise UnkeyedRow(f"no key: primary key column {', '.join(map(repr, nulls))} of "
                             f"table {rel.schema}.{rel.table} is null in this row")

    def decode(self, values: tuple) -> dict[str, Any]:
        """The row's values: :meth:`row`'s result, by the function compiled for this relation
        (one dict built in one expression, common decoders inline: ~4x cheaper than the loop);
        on any error :meth:`row` runs again to name the column that fails."""
        try:
            return self.fast_row(values)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - row() raises the precise UndecodableValue
            return self.row(values)

    def row(self, values: tuple) -> dict[str, Any]:
        """Decoded values; :class:`UndecodableValue` names the first column that fails, for
        whatever reason (any decoder error is that value's problem, never the stream's)."""
        out: dict[str, Any] = {}
        for name, decode, raw in zip(self.names, self.decoders, values, strict=True):
            if raw is None:
                out[name] = None
            elif raw is pgoutput.UNCHANGED_TOAST:
                out[name] = UNAVAILABLE
            else:
                try:
                    out[name] = decode(raw)
                except Exception as exc:  # noqa: BLE001 - set aside with its reason, see module
                    raise self._undecodable(name, raw, exc) from exc
        return out

    def _undecodable(self, name: str, raw: Any, exc: Exception) -> UndecodableValue:
        reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
        type_oid = self.relation.columns[self.names.index(name)].type_oid
        return UndecodableValue(name, type_oid, _raw_text(raw) or "", reason)

    def raw_row(self, values: tuple) -> dict[str, str | None]:
        """Each column's text as the server sent it (bounded): what a dead letter carries."""
        return {name: _raw_text(raw) for name, raw in zip(self.names, values, strict=True)}

    def raw_key(self, values: tuple) -> dict[str, Any]:
        """The key of a row that may not decode: decoded where it can be, else its text."""
        key: dict[str, Any] = {}
        for name in self.key_names:
            if name not in self.names:
                continue
            i = self.names.index(name)
            raw = values[i]
            if raw is None or raw is pgoutput.UNCHANGED_TOAST:
                key[name] = None if raw is None else UNAVAILABLE
                continue
            try:
                key[name] = self.decoders[i](raw)
            except Exception:  # noqa: BLE001 - the key then travels as its text
                key[name] = _raw_text(raw)
        return key

    def key_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return {k: row.get(k) for k in self.key_names}


def _compile_row(names: tuple[str, ...], decoders: tuple[Callable[[bytes], Any], ...]
                 ) -> Callable[[tuple], dict[str, Any]]:
    """A function ``values -> {name: decoded}`` specialised for one relation, built once.

    Why generated code: the generic loop (zip, one call and two identity tests per value, a
    dict store each) was the largest per-row cost after Kafka's. The result is identical to
    :meth:`RelationInfo.row`, raising where it raises (then ``row`` names the column)."""
    env: dict[str, Any] = {"T": pgoutput.UNCHANGED_TOAST, "U": UNAVAILABLE}
    items = []
    for i, (name, decoder) in enumerate(zip(names, decoders, strict=True)):
        env[f"d{i}"] = decoder
        value = pgtypes.inline_expression(decoder, f"v{i}") or f"d{i}(v{i})"
        items.append(f"{name!r}: None if v{i} is None else U if v{i} is T else {value}")
    unpacked = "".join(f"v{i}, " for i in range(len(names)))
    source = (f"def row(values):\n    ({unpacked}) = values\n"
              f"    return {{{', '.join(items)}}}\n")
    exec(compile(source, "<rowcast relation decoder>", "exec"), env)  # noqa: S102 - our own code
    return env["row"]


@dataclass
class _Open:
    """A change batch being filled for one (topic, partition), and its estimated size."""

    info: RelationInfo
    batch: ChangeBatch
    bytes: int = 0


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
                 on_published: Callable[[int, int], None] | None = None,
                 stream: ReplicationStream | None = None) -> None:
        self.settings = settings
        self.conn = conn
        # the slot's changes: from a walsender (``source_protocol`` "stream", what ``rowcast
        # source`` uses by default) or peeked over SQL (None: the tests' synchronous rounds)
        self.stream = stream
        self.producer = producer
        self.relations: dict[int, RelationInfo] = {}
        self.db = conn.info.dbname
        remembered = load_position(conn, settings.slot_name)  # 0 if of another history
        self.last_commit_lsn = remembered.lsn
        self._system_id = remembered.system_identifier
        self._on_published = on_published
        self._txn: _Txn | None = None
        self._pending = AckedSends(producer, "change events (the slot was not advanced)")
        self._saved_lsn = self.last_commit_lsn
        self._saved_at = -float("inf")  # the first acknowledged round saves at once
        self._last_nudge = time.monotonic()
        self._wal_after_nudge = 0
        self._unconfirmed = 0  # acknowledged by Kafka, slot not yet advanced past them
        self._last_beat = 0.0
        self._nudge_ok = True
        self.nudge_every_s = settings.source_restart_nudge_s  # grows while nudges wait (above)
        self.behind = False  # the last peek returned all it may (more WAL waits): no gap
        self._size_limits: dict[str, int] = {}  # topic -> largest key + value Kafka takes
        self._dlq_ready = False
        # watermarks: every commit at or before ``_complete`` is published and acknowledged
        self._committed = self.last_commit_lsn  # highest commit LSN handled (acked or not)
        self._complete = self.last_commit_lsn
        self._watermarked: dict[str, int] = {}  # topic -> last watermark sent to it
        self._last_watermark = 0.0
        self._published_topics: set[str] = set()
        self._sent_topics: set[str] = set()  # change topics events went to (so they exist)
        self._existing_topics: set[str] = set()
        self._topics_made: set[str] = set()  # change topics ensured by this process
        self._tables_read = -TABLES_REFRESH_S
        self._topics_checked = -TOPICS_RECHECK_S
        self.watermarks_sent = 0  # records, for the curious (tests, benchmarks)
        # change batches (source_format "rowcast"): one open batch per (topic, partition)
        self._batches = settings.source_format == "rowcast"
        self._open: dict[tuple[str, int], _Open] = {}
        self._open_rows = 0  # rows in open batches (not sent yet)
        self._in_flight = 0  # events (rows, or records in debezium format) sent, not acked
        self._partitions: dict[str, int] = {}  # topic -> partition count, read once per poll

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.001
        wal_seen = -1
        last_poll = -1e9
        gap_s = self.settings.source_poll_interval_s
        rate = 0.0  # rows/s published lately (see round_gap)
        published_last = 0
        while not stop.is_set():
            liveness.beat()
            self._maybe_beat()
            if self.stream is not None:
                # the walsender pushes what it decodes: wait on its socket, no polling (bounded,
                # so heartbeats and idle watermarks keep their cadence and ``stop`` is seen)
                if published_last == 0 and not self.behind \
                        and not self.stream.wait(STREAM_IDLE_WAIT_S):
                    self._maybe_idle_watermark()
                    continue
                wal_now = wal_seen + 1
            else:
                # the flushed position, not the inserted one: a peek decodes only flushed WAL,
                # so a commit inserted but not yet flushed when the last peek ran is looked for
                # again as soon as it is flushed (watching the insert position stalled it)
                wal_now = slot.current_flush_lsn(self.conn)
            if wal_now == wal_seen:
                self._maybe_idle_watermark()
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.settings.source_idle_backoff_max_s)
                continue
            # at most one round per ``source_poll_interval_s``: single-row commits gather into
            # one peek instead of costing a round each (a peek and a slot advance each decode
            # WAL in the server, which competes with the writers for the same cores)
            wait_s = round_gap(gap_s, rate, self.settings.source_busy_rows_per_s,
                               self.settings.source_poll_interval_max_s) \
                - (time.monotonic() - last_poll)
            if wait_s > 0 and not self.behind:  # behind (a bulk load): peek again at once
                stop.wait(wait_s)
            now = time.monotonic()
            since, last_poll = now - last_poll, now
            published = published_last = self.poll_once()
            # the commit rate, smoothed over rounds (~a third of a second while busy)
            rate += (published / max(since, 1e-3) - rate) * 0.1 if since < 1.0 else -rate
            if published == 0:
                wal_seen = wal_now  # nothing new up to here: wait for WAL to move again
            else:
                backoff_s = 0.001
        self._save_position(now=True)

    def poll_once(self) -> int:
        """One peek → publish → ack → advance round; returns the number of events published."""
        if self.stream is None:  # a walsender decodes each record once: nothing to nudge
            self._nudge_restart_lsn()  # before ``flushed``: this round's advance can use it
            flushed = slot.current_flush_lsn(self.conn)
        else:
            flushed = self.stream.idle_position()
        advance_to = None
        seen, published, last_lsn = 0, 0, 0
        every = self.settings.source_ack_every
        self._partitions.clear()  # a topic given more partitions is followed from the next poll
        with self._changes() as changes:
            for change in changes:
                seen, last_lsn = seen + 1, change.lsn
                end_lsn = self._handle(change)
                if end_lsn is not None:
                    advance_to = end_lsn
                    if self._unconfirmed + self._unacked() >= every:
                        published += self._checkpoint(end_lsn)  # a boundary: confirm so far
                        advance_to = None
                elif self._unacked() >= 4 * every:  # inside a huge transaction
                    self._await_acks()  # bounded memory; the slot advances at its commit
        if advance_to is not None:
            published += self._checkpoint(advance_to)
        elif self._txn is None and not self._unacked():
            # nothing, or only non-transactional messages (heartbeats, other apps'
            # pg_logical_emit_message), after the last confirmed transaction: let that WAL go
            if seen < self.settings.source_max_changes:
                self._skip_irrelevant_wal(flushed)
            elif seen:
                self._confirm(last_lsn)
        self.behind = seen >= self.settings.source_max_changes  # the peek stopped at its cap
        if seen < self.settings.source_max_changes and self._txn is None and not self._unacked():
            # caught up: topics that appeared since (a new deployment's table) get the current
            # watermark; ``_complete`` itself moves only with acknowledged commits, so an idle
            # pipeline stays quiet (advancing it with the WAL -- which the learners' own
            # checkpoints write -- kept every partition and labels topic ticking forever)
            self._maybe_idle_watermark()
        return published

    def _checkpoint(self, lsn: int) -> int:
        """Wait for Kafka's acks, remember ``lsn``, then advance the slot to it.

        Remembered first (at most every ``source_position_every_s``): after a server crash the
        restarted source drops the already-published transactions the slot hands out again.
        Done every ``source_ack_every`` events at a transaction boundary, so a kill between the
        acks and the advance replays at most that many.
        """
        self._await_acks()
        published, self._unconfirmed = self._unconfirmed, 0
        metrics.SOURCE_EVENTS.inc(published)
        metrics.SOURCE_CHECKPOINTS.inc()
        self.last_commit_lsn = max(self.last_commit_lsn, lsn)
        self._save_position()
        self._confirm(lsn)
        if self._on_published:
            self._on_published(published, lsn)
        return max(published, 1)

    def _skip_irrelevant_wal(self, flushed: int) -> None:
        """Nothing to publish up to ``flushed`` (read before the peek, which decodes up to the
        flush position): every transaction committed before it touched no watched table, so
        the slot can let that WAL go. Without this, writes to other tables pin WAL forever."""
        if self.stream is not None:
            self.stream.confirm(flushed)
        elif flushed > slot.confirmed_lsn(self.conn, self.settings.slot_name):
            slot.advance(self.conn, self.settings.slot_name, flushed)

    @contextmanager
    def _changes(self) -> Iterator[Iterator[slot.RawChange]]:
        """This round's changes: what the walsender sent so far (a round may then end inside
        a transaction, which the next one continues), or a peek of whole transactions."""
        if self.stream is not None:
            yield self.stream.changes(self.settings.source_max_changes)
            return
        with slot.stream_changes(self.conn, self.settings.slot_name,
                                 self.settings.publication_name,
                                 self.settings.source_max_changes) as changes:
            yield changes

    def _confirm(self, lsn: int) -> None:
        """Everything before ``lsn`` is published and acknowledged: the slot may move there."""
        if self.stream is not None:
            self.stream.confirm(lsn)
        else:
            slot.advance(self.conn, self.settings.slot_name, lsn)

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

    def _save_position(self, now: bool = False) -> None:
        """After an acknowledged batch, at most every ``source_position_every_s`` (``now``: at
        stop), with ``synchronous_commit = off``: the row is a hint that only ever prevents
        replays (lost in a server crash, the slot replays and downstream is idempotent), so it
        never waits for a WAL flush, and a save every quarter second is nearly as good as one a
        round. Needed only after a server restart or crash: a killed source finds the slot in
        memory where it confirmed it.
        Once a round, it was PostgreSQL's second most frequent transaction at a trickle (65 a
        second at 300 rows/s, beside the sink's)."""
        if self.last_commit_lsn <= self._saved_lsn:
            return
        if not now and time.monotonic() - self._saved_at < self.settings.source_position_every_s:
            return
        save_position(self.conn, self.settings.slot_name, self.last_commit_lsn, self._system_id)
        self._saved_lsn = self.last_commit_lsn
        self._saved_at = time.monotonic()

    def _nudge_restart_lsn(self) -> None:
        """At most every :attr:`nudge_every_s`, and only when WAL grew since the last one: an
        idle server is left idle (the nudge itself writes a little WAL).

        A nudge that waited for a transaction in flight (one left open, that wrote) cost this
        loop up to a quarter of a second: the next waits twice as long, up to
        :data:`NUDGE_EVERY_MAX_S`, the server's own cadence; one that completes resets it."""
        now = time.monotonic()
        if self._nudge_ok and now - self._last_nudge >= self.nudge_every_s:
            wal_now = slot.current_wal_lsn(self.conn)
            if wal_now <= self._wal_after_nudge:
                return
            self._last_nudge = now
            nudged = slot.log_running_xacts(self.conn, self.settings.slot_name)
            self._wal_after_nudge = slot.current_wal_lsn(self.conn)
            if nudged == slot.NUDGE_WAITED:
                self.nudge_every_s = min(self.nudge_every_s * 2, NUDGE_EVERY_MAX_S)
            elif nudged == slot.NUDGE_LOGGED:
                self.nudge_every_s = self.settings.source_restart_nudge_s
            else:
                self._nudge_ok = False
                log.warning("no free replication slot to log running transactions: the slot's "
                            "restart LSN will move only every ~15 s, and each poll re-reads that "
                            "WAL; raise max_replication_slots by one")

    def _await_acks(self) -> int:
        """Wait until Kafka acknowledged every pending send; returns how many there were.

        Open change batches are sent first, so a watermark always follows, on its partition,
        the rows it covers. Then every transaction whose commit was handled is published:
        watermarks go out."""
        self._flush_batches()
        try:
            self._pending.wait()
        finally:
            count, self._in_flight = self._in_flight, 0
        self._unconfirmed += count
        self._complete = max(self._complete, self._committed)
        self._maybe_idle_watermark()  # at most every watermark_interval_s (see the setting)
        return count

    def _maybe_idle_watermark(self) -> None:
        """At most every ``watermark_interval_s``: after acknowledged batches, and on every
        poll once caught up (so a watermark held back by the interval goes out soon after).
        Unbounded, single-row commits made every transaction cost one watermark per partition
        of every topic -- several faust events per row (measured: the writers' INSERT rate
        fell by 40 % with rowcast attached)."""
        if time.monotonic() - self._last_watermark >= self.settings.watermark_interval_s:
            self._send_watermarks()

    def _send_watermarks(self) -> int:
        """``_complete`` to every partition of every topic it grew for; the records sent."""
        lsn = self._complete
        if not self.settings.source_watermarks or lsn <= 0:
            return 0
        headers = [(WATERMARK_HEADER, str(lsn).encode())]
        sent = 0
        for topic in self._watermark_topics():
            if self._watermarked.get(topic, 0) >= lsn:
                continue
            try:
                partitions = self.producer.partitions_for(topic) or ()
            except KafkaTimeoutError:  # deleted since it was seen: look for it again later
                log.warning("no metadata for topic %s: no watermarks to it for now", topic)
                self._existing_topics.discard(topic)
                self._sent_topics.discard(topic)
                continue
            for partition in sorted(partitions):
                self.producer.send(topic, key=WATERMARK_KEY, value=None, partition=partition,
                                   headers=headers).add_errback(_watermark_lost, topic)
                sent += 1
            self._watermarked[topic] = lsn
        if sent:
            self._last_watermark = time.monotonic()
            self.watermarks_sent += sent
        return sent

    def _watermark_topics(self) -> set[str]:
        """The change topics of every published table that exist, and those written to."""
        now = time.monotonic()
        if now - self._tables_read >= TABLES_REFRESH_S:
            self._tables_read = now
            self._published_topics = {
                self.settings.source_topic(schema, table)
                for schema, table in slot.published_tables(self.conn,
                                                           self.settings.publication_name)}
        missing = self._published_topics - self._existing_topics - self._sent_topics
        if missing and now - self._topics_checked >= TOPICS_RECHECK_S:
            self._topics_checked = now
            self._existing_topics |= _existing(self.settings, missing)
        return (self._published_topics & self._existing_topics) | self._sent_topics

    def _unacked(self) -> int:
        """Events sent or waiting in open batches that Kafka has not acknowledged yet."""
        return self._in_flight + self._open_rows

    def _handle(self, change: slot.RawChange) -> int | None:
        if change.data and change.data[0] in _KINDS:  # the hot path: a row change
            if self._txn is None or self._txn.skip:
                return None  # replayed (or outside a transaction): not even decoded
            message = pgoutput.decode_message(change.data)
            if self._batches:
                self._batch_row_change(message, change.lsn)
            else:
                self._publish_row_change(message, change.lsn)
            return None
        message = pgoutput.decode_message(change.data)
        if isinstance(message, pgoutput.Begin):
            # published already: its commit record starts before the end LSN remembered for
            # the last published commit (strictly: the next commit record may start at
            # exactly that LSN, when two commits are adjacent in WAL -- `<=` lost such rows)
            self._txn = _Txn(message.xid, message.commit_time_us, message.final_lsn,
                             skip=message.final_lsn < self.last_commit_lsn)
        elif isinstance(message, pgoutput.Commit):
            if self._txn is not None:  # what its events carry as source.sequence[0]
                self._committed = max(self._committed, self._txn.final_lsn)
            self._txn = None
            return message.end_lsn
        elif isinstance(message, pgoutput.Relation):
            self._remember(message)
        elif isinstance(message, pgoutput.Truncate) and self._txn is not None \
                and not self._txn.skip:
            self._truncated(message, change.lsn)
        return None

    def _truncated(self, message: pgoutput.Truncate, lsn: int) -> None:
        """The tables' rows are gone: so are their predictions (:mod:`rowcast.connectors.
        truncations`; the source's background thread deletes those stored). On a connection
        of its own, committed at once: a peek holds this one's transaction open."""
        tables = [(info.relation.schema, info.relation.table)
                  for info in (self.relations.get(oid) for oid in message.relation_oids)
                  if info is not None]
        if not tables:
            return
        with connect(self.settings) as conn:
            record_truncation(conn, tables, lsn)
        log.info("TRUNCATE of %s at %s: their predictions go",
                 ", ".join(f"{s}.{t}" for s, t in tables), format_lsn(lsn))

    def _remember(self, rel: pgoutput.Relation) -> None:
        """Relation messages come again at each peek and after DDL: always overwrite.

        The event key is the primary key, as in Debezium, as the message says it was at its WAL
        position (:func:`relation_key`: the catalog is only asked for the key's order, or when
        the message cannot say, with ``REPLICA IDENTITY FULL``). Decided once per shape; a row
        it gives no key goes to the dead letters (:meth:`_refuse_unkeyed`).
        """
        known = self.relations.get(rel.oid)
        if known is not None and known.relation == rel:
            return

        def primary_key() -> tuple[str, ...] | None:
            try:
                return slot.table_key_columns(self.conn, rel.schema, rel.table)
            except SourceError:  # no primary key now, or no such table (dropped, renamed)
                return None

        key = relation_key(rel, primary_key)
        if key.missing is not None:
            log.warning("%s.%s: %s; its row changes go to the dead letters until a Relation "
                        "message names a key", rel.schema, rel.table, key.missing)
        topic = self.settings.source_topic(rel.schema, rel.table)
        if topic not in self._topics_made:
            # the first writer of a change topic makes it, with rowcast's layout: a deployment
            # made with the SQL function has none until a worker restarts for it, and a send
            # would otherwise wait for it (kafka-python's max_block_ms), then fail
            ensure_topics(self.settings, [topic])
            self._topics_made.add(topic)
        self.relations[rel.oid] = RelationInfo(
            relation=rel,
            topic=topic,
            names=tuple(c.name for c in rel.columns),
            decoders=tuple(pgtypes.decoder_for(c.type_oid) for c in rel.columns),
            key_names=key.names,
            key=key,
        )

    def _publish_row_change(self, message: Any, lsn: int) -> None:
        info = self.relations.get(message.relation_oid)
        if info is None:
            raise DecodeError(f"change for relation {message.relation_oid} before its Relation")
        assert self._txn is not None
        order = self._txn.order
        records: list[tuple[bytes, bytes | None, list | None]] = []
        try:
            if isinstance(message, pgoutput.Insert):
                self._emit(info, "c", None, info.decode(message.new), lsn, records)
            elif isinstance(message, pgoutput.Update):
                after = info.decode(message.new)
                before = info.decode(message.old) if message.old is not None else None
                if before is not None and info.key_of(before) != info.key_of(after):
                    # the primary key changed: as Debezium does, the old key is deleted (with
                    # its tombstone) and the new one created, so keyed consumers forget the old
                    self._emit(info, "d", before, None, lsn, records)
                    self._emit(info, "c", None, after, lsn, records,
                               [(OLD_KEY_HEADER, encode_key(info.key_of(before)))])
                else:
                    self._emit(info, "u", before, after, lsn, records)
            else:
                self._emit(info, "d", info.decode(message.old), None, lsn, records)
        except UndecodableValue as exc:
            self._txn.order = order
            self._set_aside(info, message, lsn, "undecodable_value", str(exc), exc.column,
                            exc.raw, exc.reason)
            return
        except EventTooLarge as exc:
            self._txn.order = order
            self._set_aside(info, message, lsn, "too_large", str(exc), exc.column, exc.raw,
                            f"event of {exc.size} bytes is too large for Kafka "
                            f"(limit {exc.limit} bytes)")
            return
        except UnkeyedRow as exc:
            self._txn.order = order
            self._refuse_unkeyed(info, message, lsn, exc)
            return
        for key, value, headers in records:  # only once the whole row change can be published
            self._send(info.topic, key, value, headers)
        self._sent_topics.add(info.topic)

    def _emit(self, info: RelationInfo, op: str, before: dict | None, after: dict | None,
              lsn: int, records: list[tuple[bytes, bytes | None, list | None]],
              headers: list | None = None) -> None:
        assert self._txn is not None
        keyed = after if after is not None else before
        assert keyed is not None
        if info.key_checked:  # rare: see RelationKey
            info.check_key(keyed)
        key = encode_key(info.key_of(keyed))
        self._txn.order += 1
        rel = info.relation
        source = SourceInfo(self.settings.topic_prefix, self.db, rel.schema, rel.table, lsn,
                            self._txn.xid, self._txn.commit_us, commit_lsn=self._txn.final_lsn)
        value = build_value(op=op, before=before, after=after, source=source,
                            tx_order=self._txn.order, now_us=time.time_ns() // 1000)
        try:
            encoded = orjson.dumps(value)
        except orjson.JSONEncodeError as exc:  # a decoded value JSON cannot hold
            raise _unencodable(info, keyed, exc) from exc
        self._check_size(info, keyed, len(key) + len(encoded))
        records.append((key, encoded, headers))
        if op == "d":
            records.append((key, None, None))  # tombstone: compacted topics forget the key

    def _check_size(self, info: RelationInfo, row: dict[str, Any], size: int) -> None:
        """Refuse an event Kafka would reject: sent, the broker's refusal would fail the whole
        batch and stop the source at the same row forever (the slot never advancing)."""
        if size <= SAFE_EVENT_BYTES:
            return
        limit = self._size_limits.get(info.topic)
        if limit is None:
            limit = min(int(self.producer.config["max_request_size"]),
                        _topic_max_message_bytes(self.settings, info.topic)) - RECORD_OVERHEAD
            self._size_limits[info.topic] = limit
        if size > limit:
            column = max(row, key=lambda name: len(str(row[name])), default=None)
            raw = str(row[column])[:RAW_LIMIT] if column is not None else ""
            raise EventTooLarge(size, limit, column, raw)

    def _set_aside(self, info: RelationInfo, message: Any, lsn: int, reason: str, error: str,
                   column: str | None, raw: str, why: str) -> None:
        """The row change goes to the dead letters, in this batch: acknowledged with the events
        before the slot advances past it, so it is neither lost nor holding the slot."""
        assert self._txn is not None
        rel = info.relation
        new = getattr(message, "new", None)
        old = getattr(message, "old", None)
        key = info.raw_key(new if new is not None else old)
        op = {pgoutput.Insert: "c", pgoutput.Update: "u", pgoutput.Delete: "d"}[type(message)]
        doc = {"op": op, "before": info.raw_row(old) if old is not None else None,
               "after": info.raw_row(new) if new is not None else None}
        value = orjson.dumps(doc)[:LETTER_VALUE_LIMIT].decode("utf-8", "ignore").encode()
        letter = announce(DeadLetter(
            "source", reason, f"{rel.schema}.{rel.table} key {orjson.dumps(key).decode()}: "
            f"{error}", topic=info.topic, key=orjson.dumps(key), value=value,
            context={"schema": rel.schema, "table": rel.table, "key": key, "column": column,
                     "raw": raw, "reason": why, "op": op, "lsn": format_lsn(lsn),
                     "xid": self._txn.xid}))
        if not self._dlq_ready:
            ensure_topics(self.settings, [self.settings.dlq_topic])  # once, on the rare path
            self._dlq_ready = True
        self._send(self.settings.dlq_topic, letter.kafka_key(), letter.encode())

    def _refuse_unkeyed(self, info: RelationInfo, message: Any, lsn: int,
                        exc: UnkeyedRow) -> None:
        """A row change with no key goes to the dead letters alone (reason ``no_key``): under
        an empty or null key, every such row would collapse onto one prediction."""
        why = str(exc)
        self._set_aside(info, message, lsn, "no_key", why, None, "", why)

    def _send(self, topic: str, key: bytes, value: bytes | None,
              headers: list | None = None, partition: int | None = None, events: int = 1
              ) -> None:
        self._pending.send(topic, key, value, partition=partition, headers=headers)
        self._in_flight += events

    # --- change batches (source_format "rowcast") -------------------------------------------

    def _batch_row_change(self, message: Any, lsn: int) -> None:
        """One row change into the open batch of its partition, after the checks that send it
        to the dead letters instead (it does not decode, cannot be encoded, or its event would
        be too large for Kafka): the same per-row decisions as one envelope per row."""
        info = self.relations.get(message.relation_oid)
        if info is None:
            raise DecodeError(f"change for relation {message.relation_oid} before its Relation")
        txn = self._txn
        assert txn is not None
        try:
            partitions = self._partition_count(info.topic)
            if type(message) is pgoutput.Insert:  # a bulk load's path: one change, no lists
                after = info.decode(message.new)
                size = self._row_bytes(info, after)
                partition = self._place(info, after, size, partitions)
                changes = None
            elif type(message) is pgoutput.Update:
                after = info.decode(message.new)
                before = info.decode(message.old) if message.old is not None else None
                if before is not None and info.key_of(before) != info.key_of(after):
                    # a primary-key change: the old key is deleted and the new one created,
                    # carrying the old key (no tombstone: change batches are not compacted)
                    changes = [("d", before, None, None, self._row_bytes(info, before)),
                               ("c", None, after, info.key_of(before),
                                self._row_bytes(info, after))]
                else:
                    size = self._row_bytes(info, after)
                    if before is not None:
                        size += self._row_bytes(info, before)
                    changes = [("u", before, after, None, size)]
            else:
                before = info.decode(message.old)
                changes = [("d", before, None, None, self._row_bytes(info, before))]
            if changes is not None:
                placed = [self._place(info, now if now is not None else was, size, partitions)
                          for _op, was, now, _old, size in changes]
        except UndecodableValue as exc:
            self._set_aside(info, message, lsn, "undecodable_value", str(exc), exc.column,
                            exc.raw, exc.reason)
            return
        except EventTooLarge as exc:
            self._set_aside(info, message, lsn, "too_large", str(exc), exc.column, exc.raw,
                            f"event of {exc.size} bytes is too large for Kafka "
                            f"(limit {exc.limit} bytes)")
            return
        except UnkeyedRow as exc:
            self._refuse_unkeyed(info, message, lsn, exc)
            return
        if changes is None:
            txn.order += 1
            self._add_to_batch(info, partition, "c", None, after, None, size, lsn)
            return
        for (op, before, after, old_key, size), partition in zip(changes, placed, strict=True):
            txn.order += 1
            self._add_to_batch(info, partition, op, before, after, old_key, size, lsn)

    def _place(self, info: RelationInfo, image: dict[str, Any], size: int, partitions: int
               ) -> int:
        """The partition of a row change whose image is ``image`` (JSON ``size`` bytes), once
        its event is known not too large for Kafka (:meth:`_check_size`) and it has a key
        (:class:`UnkeyedRow` if not; checked only where the WAL did not name the key)."""
        if info.key_checked:  # rare: see RelationKey
            info.check_key(image)
        key = encode_key(info.key_of(image)) if partitions > 1 or size > SAFE_EVENT_BYTES \
            else b""
        self._check_size(info, image, len(key) + size + BATCH_ROW_BYTES + 1024)
        return partition_of(key, partitions) if partitions > 1 else 0

    @staticmethod
    def _row_bytes(info: RelationInfo, row: dict[str, Any]) -> int:
        """The image's JSON size, an upper bound of what it adds to a batch; the check that
        every value can be encoded at all (else the row goes to the dead letters)."""
        try:
            return len(orjson.dumps(row)) + BATCH_CELL_BYTES * len(row)
        except orjson.JSONEncodeError as exc:  # a decoded value JSON cannot hold
            raise _unencodable(info, row, exc) from exc

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = sorted(self.producer.partitions_for(topic) or ())
            if partitions != list(range(len(partitions))):
                raise SourceError(f"topic {topic} has partitions {partitions}, not 0..n-1")
            count = self._partitions[topic] = len(partitions)
        return count

    def _add_to_batch(self, info: RelationInfo, partition: int, op: str, before: dict | None,
                      after: dict | None, old_key: dict | None, size: int, lsn: int) -> None:
        txn = self._txn
        assert txn is not None
        slot_key = (info.topic, partition)
        cap = self.settings.source_batch_bytes
        current = self._open.get(slot_key)
        if current is not None and (current.info is not info or current.bytes + size > cap):
            self._flush_batch(slot_key)  # a new shape, or it would grow past the cap
            current = None
        if current is None:
            rel = info.relation
            current = self._open[slot_key] = _Open(info, ChangeBatch(
                self.settings.topic_prefix, self.db, rel.schema, rel.table, info.names,
                info.key_names))
        current.batch.add(op, before, after, lsn=lsn, commit_lsn=txn.final_lsn,
                          tx_order=txn.order, xid=txn.xid, commit_us=txn.commit_us,
                          old_key=old_key)
        current.bytes += size + BATCH_ROW_BYTES
        self._open_rows += 1
        if len(current.batch) >= self.settings.source_batch_rows or current.bytes >= cap:
            self._flush_batch(slot_key)

    def _flush_batch(self, slot_key: tuple[str, int]) -> None:
        current = self._open.pop(slot_key)
        rows = len(current.batch)
        self._open_rows -= rows
        value = current.batch.encode(now_us=time.time_ns() // 1000)
        self._send(slot_key[0], BATCH_KEY, value, BATCH_HEADERS, partition=slot_key[1],
                   events=rows)
        self._sent_topics.add(slot_key[0])

    def _flush_batches(self) -> None:
        """Send every open batch (before acks are awaited, so before any watermark)."""
        for slot_key in list(self._open):
            self._flush_batch(slot_key)


def round_gap(base_s: float, rows_per_s: float, busy_rows_per_s: float, max_s: float) -> float:
    """The shortest time between two peek rounds, given the rate rows are published at.

    Each round costs the whole pipeline about the same whatever it carries (two WAL decodes in
    the server, a Kafka record per partition through every stage: ~5 ms of CPU across the
    processes here), so while single-row commits arrive faster than ``busy_rows_per_s``, the
    gap stretches with the rate, up to ``max_s``: the round count stays flat, and the cores
    stay with the application's writers. Below that rate, latency keeps ``base_s``.

    >>> round_gap(0.02, 500, 2500, 0.05)
    0.02
    >>> round_gap(0.02, 5000, 2500, 0.05)
    0.04
    >>> round_gap(0.02, 1e6, 2500, 0.05)  # a bulk load: rounds are long anyway
    0.05
    >>> round_gap(0.0, 5000, 2500, 0.05)  # no gap asked for: none
    0.0
    """
    return min(base_s * max(1.0, rows_per_s / busy_rows_per_s), max(max_s, base_s))


def _unencodable(info: RelationInfo, row: dict[str, Any], exc: Exception) -> UndecodableValue:
    for name, value in row.items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError:
            type_oid = info.relation.columns[info.names.index(name)].type_oid
            return UndecodableValue(name, type_oid, str(value)[:RAW_LIMIT], str(exc))
    return UndecodableValue("?", 0, "", str(exc))


def _watermark_lost(exc: Exception, topic: str) -> None:
    log.debug("a watermark to %s was not acknowledged (%s); the next one supersedes it",
              topic, exc)


def _existing(settings: Settings, topics: set[str]) -> set[str]:
    """Which of ``topics`` exist: a watermark must not be what creates a topic (the broker
    would give it its default partitions, before ``rowcast deploy`` creates it properly)."""
    try:
        admin = make_admin(settings)
        try:
            return topics & set(admin.list_topics())
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - asked again later; watermarks are not urgent
        log.warning("cannot list Kafka topics for watermarks (%s): retrying in %.0f s", exc,
                    TOPICS_RECHECK_S)
        return set()


def _topic_max_message_bytes(settings: Settings, topic: str) -> int:
    """The topic's ``max.message.bytes`` (the broker's ``message.max.bytes`` unless set on the
    topic); asked only for events over :data:`SAFE_EVENT_BYTES`, once per topic."""
    try:
        admin = make_admin(settings)
        try:
            found = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})],
                config_filter="all")
        finally:
            admin.close()
        return int(found["topic"][topic]["max.message.bytes"]["value"])
    except Exception as exc:  # noqa: BLE001 - an unknown limit is Kafka's default, not a stop
        log.warning("cannot read max.message.bytes of topic %s (%s): assuming Kafka's default "
                    "of %d bytes", topic, exc, DEFAULT_MAX_MESSAGE_BYTES)
        return DEFAULT_MAX_MESSAGE_BYTES
