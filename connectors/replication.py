"""The slot's changes over the streaming replication protocol (``START_REPLICATION``), pgoutput.

Why, when :func:`rowcast.connectors.slot.stream_changes` (peek) and
:func:`rowcast.connectors.slot.advance` already read the slot over SQL: every peek round costs
some ten SQL round trips (a transaction, a cursor, the advance, the flush-position polls, the
restart nudges), and an idle peeking source polls. Decoding itself costs the same either way:
at 4,000 single-row commits/s on 2 cores the walsender used 34 µs of CPU per row, as the backend
serving the peeks did (logical decoding reads all WAL, rowcast's own prediction upserts
included). Measured with the whole pipeline beside a single-row writer, alternating runs with
rowcast paused: the writer kept 0.81-0.86 of its rate streaming, 0.73-0.74 peeking; an idle
source used 1.5 ms of CPU a second (and its server side 1.5), against 16 (and 8) peeking.

psycopg 3 has no replication protocol; psycopg2's ``LogicalReplicationConnection`` has
(the PyPI ``psycopg2-binary`` wheel). It serves this module only; everything else speaks
psycopg 3. What the stream promises is what the peek promised, so the source's logic is the same
for both: every transaction whose commit is after the slot's confirmed position, whole and in
commit order, each message with the LSN the SQL functions give it; nothing is confirmed unless
:meth:`ReplicationStream.confirm` says so, so a source killed at any moment resumes from the
last confirmed commit. (psycopg2 itself moves the confirmed position on to a keepalive's
position only when the last message received is at or before what was confirmed: nothing
received is unconfirmed, and a keepalive sent in the middle of a transaction reports a position
before its commit record, which the server therefore still sends after a restart.)

Values are printed under :data:`~rowcast.connectors.slot.SESSION_SETTINGS` (passed as the
connection's startup options, which a walsender honours).
"""

from __future__ import annotations

import select
from collections.abc import Iterator

import psycopg2
import psycopg2.extras

from rowcast.connectors.slot import SESSION_SETTINGS, RawChange
from rowcast.core.dsn import redact
from rowcast.core.errors import RetryableError


def startup_options(settings: dict[str, str] = SESSION_SETTINGS) -> str:
    """The ``options`` connection parameter pinning how the walsender prints values.

    >>> startup_options({"DateStyle": "ISO, YMD", "TimeZone": "UTC"})
    '-c DateStyle=ISO,\\\\ YMD -c TimeZone=UTC'
    """
    return " ".join(f"-c {name}={value.replace(' ', chr(92) + ' ')}"
                    for name, value in settings.items())


class ReplicationStream:
    """One walsender streaming one slot's pgoutput messages; ``close`` ends it.

    ``changes`` hands over what has arrived (without waiting), ``wait`` waits for more,
    ``confirm`` tells the server everything up to an LSN is safe (the slot may drop that WAL),
    ``idle_position`` is how far the server has decoded: with no transaction open and nothing
    unconfirmed, everything before it can be confirmed (WAL of tables nobody watches).
    """

    def __init__(self, dsn: str, slot: str, publication: str) -> None:
        self._dsn = dsn
        try:
            self.conn = psycopg2.connect(
                dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection,
                options=startup_options())
            self.cursor = self.conn.cursor()
            self.cursor.start_replication(
                slot_name=slot, decode=False, start_lsn=0,  # 0: from the confirmed position
                options={"proto_version": "1", "publication_names": publication,
                         "messages": "true"})
        except psycopg2.Error as exc:
            self.close()
            raise self._lost(exc, f"could not stream slot {slot!r}") from None
        self._confirmed = 0

    def changes(self, max_changes: int) -> Iterator[RawChange]:
        """What the server sent so far, up to ``max_changes`` messages; never blocks."""
        read = self.cursor.read_message
        for _ in range(max_changes):
            try:
                message = read()
            except psycopg2.Error as exc:
                raise self._lost(exc) from None
            if message is None:
                return
            yield RawChange(message.data_start, None, message.payload)

    def wait(self, timeout_s: float) -> bool:
        """Until the server sends something (a change or a keepalive) or ``timeout_s``; True
        when it did. Only after :meth:`changes` ran dry: what libpq already read is not seen."""
        return bool(select.select([self.conn], [], [], timeout_s)[0])

    def confirm(self, lsn: int) -> None:
        """Everything before ``lsn`` is published and acknowledged: the slot may move there."""
        if lsn > self._confirmed:
            try:
                self.cursor.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)
            except psycopg2.Error as exc:
                raise self._lost(exc) from None
            self._confirmed = lsn

    def idle_position(self) -> int:
        """The last position the server reported: every commit before it was sent."""
        return int(self.cursor.wal_end or 0)

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None and not conn.closed:
            conn.close()


    def _lost(self, exc: psycopg2.Error, what: str = "the replication connection failed or "
              "was lost") -> RetryableError:
        """One line, the password redacted; the process exits for its supervisor to restart
        it, and the slot hands out again what was not confirmed."""
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return RetryableError(f"PostgreSQL: {what} ({redact(why, self._dsn)})")
