"""Which database history a stored position belongs to, and what to do when it is another one.

LSNs order changes only within one cluster's WAL. rowcast stores positions in the database it
streams (the source's remembered commit LSN, the learner's per-stream high-water marks, each
prediction's source LSN); a dump/restore or major upgrade into another cluster brings them along,
and that cluster's WAL may be behind them: compared raw, the source would drop new transactions
as replays and the sink keep old predictions as "newer". So every stored position carries the
cluster's system identifier (:func:`rowcast.connectors.slot.system_identifier`), and a stored
position is of **another history** when

* it was stored under another system identifier (dump/restore, ``pg_upgrade``: a new cluster), or
* it is ahead of the server's current WAL insert position, whatever its identifier (a copy that
  kept the identifier, e.g. a physical backup, with positions from a later point; or positions
  stored before identifiers were).

A position without an identifier that passes the WAL check is adopted quietly (stored before
rowcast kept identifiers). Another history is never compared with this one: each process logs one
ERROR naming both identifiers and what it does, counts it in
``rowcast_position_history_changes_total{process}``, and starts a new history, so nothing is
skipped or dropped because of a position:

* source: forgets its remembered commit LSN; every transaction the slot hands out is published;
* learner: starts a new position epoch (high-water marks cleared; replays are recognised by the
  learned-keys table, not by position);
* sink: every stored prediction's source LSN is set to ``0/0``, so any prediction of the new
  history replaces it. Predictions of the old history still unread on Kafka are then compared by
  raw LSN with the new history's (a sink far behind at the move may let one win or lose).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psycopg

from rowcast.connectors import slot
from rowcast.core import metrics
from rowcast.core.lsn import format_lsn

if TYPE_CHECKING:  # only a type here: importing it would load river (and scipy) into the
    # source and the sink, ~100 MB of RSS each for nothing
    from rowcast.models.learning import LearnerState

log = logging.getLogger(__name__)

DDL = """
CREATE SCHEMA IF NOT EXISTS rowcast;
CREATE TABLE IF NOT EXISTS rowcast.position_histories (
    owner              text PRIMARY KEY,
    system_identifier  text NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
"""

_warned_unreadable = False


def other_history(stored_id: str | None, server_id: str | None, stored_lsn: int,
                  wal_lsn: int) -> str | None:
    """Why a position stored under ``stored_id`` at ``stored_lsn`` is not of this server's
    history, or None when it is (or cannot be told apart from it)."""
    if stored_id is not None and server_id is not None and stored_id != server_id:
        return "stored by another cluster"
    if stored_lsn > wal_lsn:
        return (f"stored at {format_lsn(stored_lsn)}, ahead of this server's WAL "
                f"({format_lsn(wal_lsn)})")
    return None


def server_identity(conn: psycopg.Connection) -> tuple[str | None, int]:
    """This server's system identifier (None when it refuses it, said once) and WAL position."""
    global _warned_unreadable
    server_id = slot.system_identifier(conn)
    if server_id is None and not _warned_unreadable:
        _warned_unreadable = True
        log.warning("cannot read the cluster's system identifier (pg_control_system()): a "
                    "restore into another cluster is recognised only when rowcast's stored "
                    "positions are ahead of its WAL; GRANT EXECUTE ON FUNCTION "
                    "pg_control_system() TO the rowcast role")
    return server_id, slot.current_wal_lsn(conn)


def announce(process: str, what: str, stored_id: str | None, server_id: str | None,
             reason: str, action: str) -> None:
    """The one loud line (and the metric) of a process that starts a new history."""
    metrics.POSITION_HISTORY_CHANGES.labels(process).inc()
    log.error("%s: %s belongs to another database history (%s; stored under system identifier "
              "%s, this server is %s): %s. Expected once after restoring the database into "
              "another cluster; otherwise check ROWCAST_POSTGRES_DSN", process, what, reason,
              stored_id or "unknown", server_id or "unknown", action)


def follow_learner(conn: psycopg.Connection, deployment: str, state: LearnerState) -> bool:
    """Tie a restored learner state to this server's history; True when a new epoch began."""
    server_id, wal = server_identity(conn)
    newest = max((max(order[0], order[1]) for order in state.high_water.values()), default=0)
    reason = other_history(state.system_identifier, server_id, newest, wal)
    if reason is None:
        state.system_identifier = server_id or state.system_identifier
        return False
    announce("learner", f"the positions checkpointed for {deployment}", state.system_identifier,
             server_id, reason, "starting a new position epoch (per-stream high-water marks "
             "cleared; no label is dropped by position)")
    state.new_epoch(server_id)
    return True


def follow_predictions(conn: psycopg.Connection) -> int:
    """At sink start: rebase predictions of another history; returns how many were rebased.

    Serialized between sinks (one rebases, the others then find this server's identifier), and
    done before the sink writes anything, so every row rebased is the old history's. The
    ``max(source_lsn)`` scan runs only when no identifier is stored yet (or readable)."""
    server_id, wal = server_identity(conn)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('rowcast.position_histories'))")
        conn.execute(DDL)
        row = conn.execute("SELECT system_identifier FROM rowcast.position_histories "
                           "WHERE owner = 'predictions'").fetchone()
        stored_id = row[0] if row else None
        newest = 0
        if stored_id is None or server_id is None:
            newest = conn.execute("SELECT coalesce(max(source_lsn) - '0/0'::pg_lsn, 0)::bigint "
                                  "FROM rowcast.predictions").fetchone()[0]
        reason = other_history(stored_id, server_id, newest, wal)
        rebased = 0
        if reason is not None:
            rebased = conn.execute("UPDATE rowcast.predictions SET source_lsn = '0/0' "
                                   "WHERE source_lsn <> '0/0'").rowcount
            # TRUNCATE positions are of that history too: kept, they would refuse every new
            # prediction of a truncated table (rowcast.connectors.truncations)
            conn.execute("DELETE FROM rowcast.truncations")
            announce("sink", "rowcast.predictions", stored_id, server_id, reason,
                     f"the source LSN of its {rebased} rows was set to 0/0, so every new "
                     "prediction replaces them")
        if server_id is not None and server_id != stored_id:
            conn.execute("INSERT INTO rowcast.position_histories (owner, system_identifier) "
                         "VALUES ('predictions', %s) ON CONFLICT (owner) DO UPDATE SET "
                         "system_identifier = EXCLUDED.system_identifier, updated_at = now()",
                         (server_id,))
    return rebased
