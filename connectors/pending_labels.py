"""What the learner keeps between label events, in Postgres: features of scored rows waiting
for their label (``rowcast.pending_labels``), labels waiting for their row's features
(``rowcast.held_labels``) and the rows learned already (``rowcast.learned_labels``).

Written only inside the learner's checkpoint transaction (:meth:`PgPending.flush`, or
:meth:`PgPending.write_changes` in a checkpoint written behind), so the tables always match the
checkpointed labels-topic offset; see :mod:`rowcast.models.learning` for
the rules they serve (each row learned once, early labels held).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import psycopg
from psycopg import sql

from rowcast.connectors.copy_text import copy_text, timestamp_text

DDL = """
CREATE TABLE IF NOT EXISTS rowcast.pending_labels (
    deployment  text NOT NULL,
    pk          text NOT NULL,
    entry       json NOT NULL,
    scored_at   timestamptz NOT NULL,
    PRIMARY KEY (deployment, pk)
);
CREATE INDEX IF NOT EXISTS pending_labels_scored_at ON rowcast.pending_labels (deployment, scored_at);
CREATE TABLE IF NOT EXISTS rowcast.held_labels (
    deployment  text NOT NULL,
    generation  text NOT NULL,
    pk          text NOT NULL,
    entry       json NOT NULL,
    labelled_at timestamptz NOT NULL,
    PRIMARY KEY (deployment, generation, pk)
);
CREATE INDEX IF NOT EXISTS held_labels_labelled_at ON rowcast.held_labels (deployment, labelled_at);
CREATE TABLE IF NOT EXISTS rowcast.learned_labels (
    deployment  text NOT NULL,
    generation  text NOT NULL,
    pk          text NOT NULL,
    entry       json NOT NULL,
    learned_at  timestamptz NOT NULL,
    PRIMARY KEY (deployment, generation, pk)
);
CREATE INDEX IF NOT EXISTS learned_labels_learned_at ON rowcast.learned_labels (deployment, learned_at);
"""


def ensure_schema(conn: psycopg.Connection) -> None:
    conn.execute(DDL)


def has_expired(conn: psycopg.Connection, deployment: str, retention_s: float) -> bool:
    """Pending features, held labels or learned-row markers older than the retention wait to
    be expired (the first two counted) by a checkpoint written in place: checkpoints written
    behind expire nothing, so without markers here a deployment whose every row gets its
    label kept its markers forever."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM rowcast.pending_labels WHERE deployment = %s "
        "AND scored_at < now() - make_interval(secs => %s)) OR EXISTS (SELECT 1 FROM "
        "rowcast.held_labels WHERE deployment = %s AND labelled_at < now() - "
        "make_interval(secs => %s)) OR EXISTS (SELECT 1 FROM rowcast.learned_labels WHERE "
        "deployment = %s AND learned_at < now() - make_interval(secs => %s))",
        (deployment, retention_s, deployment, retention_s, deployment, retention_s)
    ).fetchone()[0]


def held_labels(conn: psycopg.Connection, deployment: str, generation: str) -> int:
    """Labels of this generation the learner holds because their row's features never came."""
    return conn.execute("SELECT count(*) FROM rowcast.held_labels WHERE deployment = %s "
                        "AND generation = %s", (deployment, generation)).fetchone()[0]


_COPY_MARKERS = ("COPY rowcast.learned_labels (deployment, generation, pk, entry, learned_at) "
                 "FROM STDIN")


def _marker_lines(scope: list[str], kept: list[tuple[bytes, dict[str, Any]]]) -> bytes:
    r"""Learned-row markers in COPY's text format, as bytes. The key (``key_id``) and the
    entry are JSON from orjson, without raw control characters, but their backslashes are
    escaped; a checkpoint's markers share a few commit times, each turned into text once.

    >>> lines = _marker_lines(["d", "g"], [(b'{"k":"a\\b"}', {"y": 1, "at_us": 0})])
    >>> print(lines.decode().replace("\t", " | "), end="")
    d | g | {"k":"a\\b"} | {"y":1,"at_us":0} | 1970-01-01T00:00:00+00:00
    """
    prefix = "".join(copy_text(part) + "\t" for part in scope).encode()
    stamps: dict[int, bytes] = {}
    dumps = orjson.dumps
    # appended as made: orjson's output lives in a 4 KiB allocation whatever its length, and
    # keeping one per marker until a join touched a fresh page each (2.6 against 0.3 µs)
    out = bytearray()
    for key, entry in kept:
        at = entry["at_us"]
        stamp = stamps.get(at) or stamps.setdefault(at, f"\t{timestamp_text(at)}\n".encode())
        value = dumps(entry)
        out += prefix
        out += key.replace(b"\\", b"\\\\") if b"\\" in key else key
        out += b"\t"
        out += value.replace(b"\\", b"\\\\") if b"\\" in value else value
        out += stamp
    return bytes(out)


# what changed since a checkpoint, per map (features, held, learned): key -> entry, None = gone
Changes = dict[str, dict[bytes, dict[str, Any] | None]]

_TABLES = {  # what PgPending keeps: table, time column, keyed by generation too
    "features": ("pending_labels", "scored_at", False),
    "held": ("held_labels", "labelled_at", True),
    "learned": ("learned_labels", "learned_at", True),
}


class PgPending:
    """What the learner keeps between events, in Postgres, changed in memory between checkpoints.

    Three maps by primary key: features waiting for a label (``rowcast.pending_labels``), labels
    waiting for their features (``rowcast.held_labels``) and rows learned already
    (``rowcast.learned_labels``); the last two per generation. Reads go to Postgres only for
    keys not seen since the last checkpoint (one query per map and batch, :meth:`prefetch`);
    writes wait for :meth:`flush`, inside the checkpoint's transaction, so the tables always
    match the checkpointed offset. Memory holds only what changed since the last checkpoint.
    """

    def __init__(self, conn: psycopg.Connection, deployment: str, generation: str = "") -> None:
        self.conn = conn
        self.deployment = deployment
        self.generation = generation
        self.cache: Changes = {k: {} for k in _TABLES}
        self.dirty: Changes = {k: {} for k in _TABLES}
        self._others_dropped = False  # other generations' rows: deleted by the next flush

    @property
    def settled(self) -> bool:
        """Whether a checkpoint of this generation was written here already (the first one
        also drops the rows of older generations)."""
        return self._others_dropped

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """One query for the three maps (a round trip per map and batch was a visible share
        of the learner's per-label cost)."""
        keys = set(keys)
        parts, args, asked = [], [], {}
        for kind, (table, _, by_generation) in _TABLES.items():
            cache = self.cache[kind]
            missing = [k for k in keys if k not in cache]
            if not missing:
                continue
            asked[kind] = missing
            part = sql.SQL("SELECT {} AS kind, pk, entry FROM rowcast.{} WHERE deployment = %s "
                           "AND pk = ANY(%s)").format(sql.Literal(kind), sql.Identifier(table))
            args += [self.deployment, [k.decode() for k in missing]]
            if by_generation:
                part += sql.SQL(" AND generation = %s")
                args.append(self.generation)
            parts.append(part)
        if not parts:
            return
        found: dict[str, dict[bytes, Any]] = {kind: {} for kind in asked}
        for kind, pk, entry in self.conn.execute(sql.SQL(" UNION ALL ").join(parts), args):
            found[kind][pk.encode()] = entry
        for kind, missing in asked.items():
            cache, got = self.cache[kind], found[kind]
            for k in missing:
                cache[k] = got.get(k)

    def assume_absent(self, keys: Iterable[bytes], kinds: Iterable[str]) -> None:
        """Rows the learner knows are new (inserted after everything their partition delivered
        before): not looked up in ``kinds`` (the maps, e.g. ``learned``), as if not there."""
        for kind in kinds:
            cache = self.cache[kind]
            for k in keys:
                cache.setdefault(k, None)

    def _get(self, kind: str, key: bytes) -> dict[str, Any] | None:
        if key not in self.cache[kind]:
            self.prefetch([key])
        return self.cache[kind].get(key)

    def _set(self, kind: str, key: bytes, entry: dict[str, Any] | None) -> None:
        self.cache[kind][key] = self.dirty[kind][key] = entry

    def put(self, key: bytes, entry: dict[str, Any]) -> None:
        self._set("features", key, entry)

    def pop(self, key: bytes) -> dict[str, Any] | None:
        entry = self._get("features", key)
        if entry is not None:
            self._set("features", key, None)
        return entry

    def hold(self, key: bytes, entry: dict[str, Any]) -> None:
        self._set("held", key, entry)

    def take_held(self, key: bytes) -> dict[str, Any] | None:
        entry = self._get("held", key)
        if entry is not None:
            self._set("held", key, None)
        return entry

    def learned(self, key: bytes) -> dict[str, Any] | None:
        return self._get("learned", key)

    def mark_learned(self, key: bytes, entry: dict[str, Any]) -> None:
        self._set("learned", key, entry)

    def flush(self, retention_s: float) -> tuple[int, int]:
        """Write what changed and expire what waited longer than ``retention_s``; returns how
        many features and how many held labels expired. Call inside the checkpoint's
        transaction."""
        expired = {}
        self.write_changes(self.conn, self.dirty)
        with self.conn.cursor() as cur:
            for kind, (table, at, by_generation) in _TABLES.items():
                name = sql.Identifier(table)
                if by_generation and not self._others_dropped:
                    # other generations' rows are of no use any more: dropped by the first
                    # checkpoint of this generation here (not by every one: the test was a
                    # scan of every row of the deployment), as two ranges of the primary key
                    cur.execute(sql.SQL("DELETE FROM rowcast.{} WHERE deployment = %s AND "
                                        "(generation < %s OR generation > %s)").format(name),
                                (self.deployment, self.generation, self.generation))
                expired[kind] = cur.execute(sql.SQL(
                    "DELETE FROM rowcast.{} WHERE deployment = %s AND {} < now() - "
                    "make_interval(secs => %s)").format(name, sql.Identifier(at)),
                    (self.deployment, retention_s)).rowcount
        self.forget()
        self._others_dropped = True  # committed with this checkpoint, or all of it is forgotten
        return expired["features"], expired["held"]

    def hand_off(self) -> Changes:
        """The changes since the last checkpoint, for a checkpoint written behind
        (:meth:`write_changes` on another connection, while learning goes on): the maps start
        empty, and what was handed off stays readable as if stored, so a key learned just
        before reads as learned until its write commits (else a label arriving twice then
        would be learned twice). If that write fails, the learner restores the last
        checkpoint, and :meth:`forget` drops all of it.

        >>> pending = PgPending(None, "d", "g")  # no query: every key below is known
        >>> pending.mark_learned(b'{"id":1}', {"y": 1.0, "at_us": 0})
        >>> changes = pending.hand_off()
        >>> changes["learned"], pending.dirty["learned"]
        ({b'{"id":1}': {'y': 1.0, 'at_us': 0}}, {})
        >>> pending.learned(b'{"id":1}')
        {'y': 1.0, 'at_us': 0}
        """
        changes, self.dirty = self.dirty, {k: {} for k in _TABLES}
        self.cache = {kind: dict(entries) for kind, entries in changes.items()}
        return changes

    def take_back(self, changes: Changes) -> None:
        """Changes handed off but not written (the checkpoint was written in place instead):
        dirty again, under what changed since.

        >>> pending = PgPending(None, "d", "g")
        >>> pending.mark_learned(b"a", {"y": 1, "at_us": 0})
        >>> changes = pending.hand_off()
        >>> pending.mark_learned(b"b", {"y": 2, "at_us": 0})
        >>> pending.take_back(changes)
        >>> sorted(pending.dirty["learned"])
        [b'a', b'b']
        """
        for kind, entries in changes.items():
            self.dirty[kind] = {**entries, **self.dirty[kind]}

    def write_changes(self, conn: psycopg.Connection, changes: Changes) -> None:
        """Store ``changes`` (the dirty maps, or what :meth:`hand_off` returned) through
        ``conn``, inside its open transaction: deletes, then one statement per map."""
        with conn.cursor() as cur:
            for kind, (table, _, by_generation) in _TABLES.items():
                name = sql.Identifier(table)
                dirty = changes[kind]
                gone = [k.decode() for k, v in dirty.items() if v is None]
                kept = [(k, v) for k, v in dirty.items() if v is not None]
                where = sql.SQL("deployment = %s" + (" AND generation = %s" if by_generation
                                                     else ""))
                scope = [self.deployment] + ([self.generation] if by_generation else [])
                if gone:
                    cur.execute(sql.SQL("DELETE FROM rowcast.{} WHERE {} AND pk = ANY(%s)")
                                .format(name, where), [*scope, gone])
                if kept:  # one statement per map, whatever the number of rows
                    self._write(conn, cur, kind, scope, kept)

    def _write(self, conn: psycopg.Connection, cur: psycopg.Cursor, kind: str,
               scope: list[str], kept: list[tuple[bytes, dict[str, Any]]]) -> None:
        """Insert or replace ``kept`` (key, entry) in the map's table.

        A learned-row marker is new but for a row deleted and inserted again with its key
        (learned again, by design): a plain ``COPY`` in a savepoint, and the upsert only when
        it meets a stored marker. The markers are most of what a checkpoint writes in a bulk
        load, and the learner waits for them: the INSERT from one JSON document was two
        thirds of each checkpoint and a sixth of the learner's wall time (200k labelled rows,
        py-spy); by COPY the server spends 6.7 µs per marker instead of 8.3 (median of
        6,000-marker flushes), the client ~0.5 µs more. The upsert's speculative insertion
        probed the primary key once per row first: 5.7 vs 3.9 µs of server CPU per marker."""
        table, at, by_generation = _TABLES[kind]
        if kind == "learned":
            try:
                lines = _marker_lines(scope, kept)
            except (OverflowError, ValueError):  # a time no timestamptz literal here can say
                lines = None
            if lines is not None:
                try:
                    with conn.transaction(), cur.copy(_COPY_MARKERS) as copy:
                        copy.write(lines)
                    return
                except psycopg.errors.UniqueViolation:
                    pass
        columns = "deployment, generation, pk, entry, " if by_generation \
            else "deployment, pk, entry, "
        conflict = "deployment, generation, pk" if by_generation else "deployment, pk"
        # the rows as one JSON document (orjson, in C): three text arrays were dumped element
        # by element in Python, ~5 us per learned row
        cur.execute(sql.SQL(
            "INSERT INTO rowcast.{} (" + columns + "{}) SELECT " + "%s, " * len(scope)
            + "u.pk, u.entry, to_timestamp(u.at / 1e6) FROM json_to_recordset(%s::json) AS "
            "u(pk text, entry json, at float8) ON CONFLICT (" + conflict + ") DO UPDATE SET "
            "entry = EXCLUDED.entry, {} = EXCLUDED.{}").format(
                sql.Identifier(table), sql.Identifier(at), sql.Identifier(at),
                sql.Identifier(at)), [*scope, orjson.dumps(
                    [{"pk": k.decode(), "entry": v, "at": v["at_us"]} for k, v in kept]).decode()])

    def forget(self) -> None:
        """Drop unflushed changes (after a failed checkpoint or on restore)."""
        self._others_dropped = False  # a failed checkpoint's delete was rolled back too
        for kind in _TABLES:
            self.cache[kind].clear()
            self.dirty[kind].clear()

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM rowcast.pending_labels WHERE deployment = %s",
                                 (self.deployment,)).fetchone()[0]
