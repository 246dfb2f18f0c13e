"""``rowcast reconcile``: does every row have its prediction, and is every label learned?

The check users (and the fault tests) run after an incident. Per deployment:

- every row of the table has exactly one current prediction in ``rowcast.predictions`` (the
  primary key makes "more than one" impossible; ``missing`` counts rows with none), and
  ``orphans`` counts predictions whose row is gone (deleted rows: information, not an error);
- the learner's latest checkpoint has consumed the whole labels topic (``unlearned`` label
  events), and no stage's consumer group has lag left;
- no label waits for features that never came (``unjoined``: labels the learner holds, e.g. a
  labels-table row for a key that was never scored; :func:`unjoined_labels`). Those that
  expired unjoined are counted in the learner's ``unjoined`` counter.

``--repair`` re-emits the rows without a prediction (as ``rowcast backfill NAME`` does), so they
are scored again; run it once the pipeline is up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from psycopg import sql

from rowcast.connectors.lag import consumer_lag
from rowcast.connectors.pending_labels import held_labels
from rowcast.connectors.registry import list_deployments
from rowcast.core.settings import Settings
from rowcast.models.deployment import Deployment


@dataclass
class Reconciled:
    deployment: str
    table: str
    rows: int
    predicted: int
    missing: int
    orphans: int
    learned: int
    unlearned: int
    lag: dict[str, int] = field(default_factory=dict)
    missing_sample: list[Any] = field(default_factory=list)
    error: str | None = None
    unjoined: int = 0  # labels held for features that never came (see unjoined_labels)

    @property
    def ok(self) -> bool:
        return self.error is None and self.missing == 0 and self.unlearned == 0 \
            and not any(self.lag.values()) and self.unjoined == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _pk(conn: psycopg.Connection, d: Deployment, alias: str) -> sql.Composable:
    """The row's key exactly as the predictions table stores it (see :mod:`rowcast.core.keys`):
    built by ``rowcast._key_sql``, the expression the ``_scored`` view joins on too."""
    text = conn.execute("SELECT rowcast._key_sql(%s::regclass, %s)",
                        (sql.Identifier(d.schema, d.table).as_string(conn), alias)).fetchone()[0]
    return sql.SQL(text)


def _table_counts(conn: psycopg.Connection, d: Deployment) -> tuple[int, int, int, list[Any]]:
    table = sql.Identifier(d.schema, d.table)
    key = _pk(conn, d, "t")
    match = sql.SQL("p.deployment = {} AND p.source_schema = {} AND p.source_table = {} "
                    "AND p.pk = {}").format(sql.Literal(d.name), sql.Literal(d.schema),
                                            sql.Literal(d.table), key)
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
    missing = conn.execute(sql.SQL(
        "SELECT {} FROM {} t WHERE NOT EXISTS (SELECT 1 FROM rowcast.predictions p WHERE {}) "
    ).format(key, table, match)).fetchall()
    orphans = conn.execute(sql.SQL(
        "SELECT count(*) FROM rowcast.predictions p WHERE p.deployment = {} "
        "AND p.source_schema = {} AND p.source_table = {} "
        "AND NOT EXISTS (SELECT 1 FROM {} t WHERE {})"
    ).format(sql.Literal(d.name), sql.Literal(d.schema), sql.Literal(d.table), table,
             match)).fetchone()[0]
    return rows, len(missing), orphans, [m[0] for m in missing[:20]]


def reconcile(conn: psycopg.Connection, admin: KafkaAdminClient,
              settings: Settings) -> list[Reconciled]:
    out = []
    for d in list_deployments(conn):
        try:
            rows, missing, orphans, sample = _table_counts(conn, d)
        except psycopg.errors.UndefinedTable:
            out.append(Reconciled(d.name, d.qualified_table, 0, 0, 0, 0, 0, 0, error=(
                f"table {d.qualified_table} no longer exists: `rowcast undeploy {d.name}` "
                "removes the deployment")))
            continue
        predicted = conn.execute(
            "SELECT count(*) FROM rowcast.predictions WHERE deployment = %s AND source_schema = %s "
            "AND source_table = %s", (d.name, d.schema, d.table)).fetchone()[0]
        learned, offset = conn.execute(
            "SELECT samples, labels_offset FROM rowcast.model_versions WHERE deployment = %s "
            "ORDER BY version DESC LIMIT 1", (d.name,)).fetchone() or (0, 0)
        labels = TopicPartition(settings.labels_topic(d.name), 0)
        try:
            end = admin.list_partition_offsets({labels: OffsetSpec.LATEST})[labels].offset
        except Exception:  # no labels topic yet: nothing to learn
            end = 0
        lag = {st.name: sum(p.lag for p in consumer_lag(admin, st.group, list(st.topics)))
               for st in settings.stages([d])}
        out.append(Reconciled(d.name, d.qualified_table, rows, predicted, missing, orphans,
                              learned, max(end - offset, 0), lag, sample))
        out[-1].unjoined = unjoined_labels(conn, d)
    return out


def unjoined_labels(conn: psycopg.Connection, d: Deployment) -> int:
    """Labels of the deployment's current generation that the learner holds, as of its last
    checkpoint, because their row's features never came (a label is otherwise learned when
    its row is scored, even when it arrived first)."""
    try:
        return held_labels(conn, d.name, d.generation)
    except psycopg.errors.UndefinedTable:  # a database initialised before labels were held
        return 0


def render(reports: list[Reconciled]) -> str:
    lines = [f"{'DEPLOYMENT':<20} {'ROWS':>8} {'PREDICTED':>9} {'MISSING':>7} {'ORPHANS':>7} "
             f"{'LEARNED':>8} {'UNLEARNED':>9}  LAG (scorer/learner/sink)  RESULT"]
    for r in reports:
        lag = "/".join(str(r.lag.get(s, 0)) for s in ("scorer", "learner", "sink"))
        if r.error is not None:
            lines.append(f"{r.deployment:<20} ERROR: {r.error}")
            continue
        lines.append(f"{r.deployment:<20} {r.rows:>8} {r.predicted:>9} {r.missing:>7} "
                     f"{r.orphans:>7} {r.learned:>8} {r.unlearned:>9}  {lag:<26} "
                     f"{'OK' if r.ok else 'NOT RECONCILED'}")
        if r.unjoined:
            lines.append(f"    labels that never joined their row's features: {r.unjoined} "
                         "(held by the learner until ROWCAST_LABEL_RETENTION_S)")
        if r.missing_sample:
            lines.append(f"    rows without a prediction (first {len(r.missing_sample)}): "
                         f"{r.missing_sample}")
    return "\n".join(lines)
