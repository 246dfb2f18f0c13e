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

A row without a prediction whose change is on the dead-letter topic (a NaN feature the scorer
refused, a row too large for Kafka, a key PostgreSQL cannot index) is not lost: it was set
aside with its reason and waits for a fix and ``rowcast dlq replay``. Reconcile counts it
``dead_lettered`` and still reconciles; only rows nobody accounts for are ``missing``
(:func:`set_aside_keys` reads the letters).

``--repair`` re-emits the missing rows (as ``rowcast backfill NAME`` does, leaving out the
dead-lettered ones, which would only be refused again), so they are scored again; run it once
the pipeline is up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import psycopg
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from psycopg import sql

from rowcast.connectors.lag import consumer_lag
from rowcast.connectors.pending_labels import held_labels
from rowcast.connectors.registry import list_deployments
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.keys import stored_key
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
    dead_lettered: int = 0  # rows without a prediction whose change is on the dead-letter topic
    set_aside: list[str] = field(default_factory=list, repr=False)  # their keys (stored_key)

    @property
    def ok(self) -> bool:
        return self.error is None and self.missing == 0 and self.unlearned == 0 \
            and not any(self.lag.values()) and self.unjoined == 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["set_aside"]
        return {**out, "ok": self.ok}


def _pk(conn: psycopg.Connection, d: Deployment, alias: str) -> sql.Composable:
    """The row's key exactly as the predictions table stores it (see :mod:`rowcast.core.keys`):
    built by ``rowcast._key_sql``, the expression the ``_scored`` view joins on too."""
    text = conn.execute("SELECT rowcast._key_sql(%s::regclass, %s)",
                        (sql.Identifier(d.schema, d.table).as_string(conn), alias)).fetchone()[0]
    return sql.SQL(text)


def set_aside_keys(letters: Iterable[DeadLetter], deployments: Iterable[Deployment],
                   settings: Settings) -> dict[str, set[str]]:
    """Per deployment, the keys (:func:`~rowcast.core.keys.stored_key` text) of rows whose
    change a stage set aside on the dead-letter topic.

    Each stage's letter names the row its own way: the source's carries the table and the key
    it could decode in ``context``; the scorer's is on the table's change topic, keyed by the
    row's key, naming the deployment that refused it (letters written before that name every
    deployment of the table); the sink's is on the deployment's predictions topic, keyed by
    the prediction's key. Letters that name no row (a bad envelope, a label) are left out.

    >>> from rowcast.models.deployment import Feature
    >>> s = Settings(topic_prefix="rc")
    >>> d = Deployment("fraud", "public", "orders", "y", (Feature("x", "number"),),
    ...                "linear_regression", ("id",))
    >>> letters = [DeadLetter("score", "bad_feature", "fraud: NaN", topic="rc.public.orders",
    ...                       key=b'{"id":21}', context={"deployment": "fraud"}),
    ...            DeadLetter("source", "event_too_large", "...", topic="rc.public.orders",
    ...                       context={"schema": "public", "table": "orders", "key": {"id": 23}}),
    ...            DeadLetter("score", "bad_envelope", "not JSON", topic="rc.public.orders",
    ...                       key=b"\\xff")]
    >>> sorted(set_aside_keys(letters, [d], s)["fraud"])
    ['{"id":21}', '{"id":23}']
    """
    deployments = list(deployments)
    by_table: dict[tuple[str, str], list[str]] = {}
    by_topic: dict[str, list[str]] = {}
    for d in deployments:
        by_table.setdefault((d.schema, d.table), []).append(d.name)
        by_topic.setdefault(settings.source_topic(d.schema, d.table), []).append(d.name)
        by_topic.setdefault(settings.predictions_topic(d.name), []).append(d.name)
    out: dict[str, set[str]] = {d.name: set() for d in deployments}
    for letter in letters:
        if letter.stage == "source":
            names = by_table.get((letter.context.get("schema"), letter.context.get("table")), [])
            key: Any = letter.context.get("key")
        else:
            names = by_topic.get(letter.topic or "", [])
            named = letter.context.get("deployment")
            names = [named] if named in names else names
            try:
                key = orjson.loads(letter.key) if letter.key else None
            except orjson.JSONDecodeError:
                key = None
        if not isinstance(key, dict):
            continue
        for name in names:
            out[name].add(stored_key(key))
    return out


def _table_counts(conn: psycopg.Connection, d: Deployment, set_aside: Iterable[str] = ()
                  ) -> tuple[int, list[Any], list[Any], int]:
    """Rows, the keys of rows without a prediction (those not set aside, those set aside),
    and orphans. Keys are compared as ``jsonb`` (numbers by value, objects in any order)."""
    table = sql.Identifier(d.schema, d.table)
    key = _pk(conn, d, "t")
    match = sql.SQL("p.deployment = {} AND p.source_schema = {} AND p.source_table = {} "
                    "AND p.pk = {}").format(sql.Literal(d.name), sql.Literal(d.schema),
                                            sql.Literal(d.table), key)
    aside = sql.Literal("[" + ",".join(sorted(set_aside)) + "]")
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
    without = conn.execute(sql.SQL(
        "SELECT {key}, {key} IN (SELECT jsonb_array_elements({aside}::jsonb)) FROM {table} t "
        "WHERE NOT EXISTS (SELECT 1 FROM rowcast.predictions p WHERE {match})"
    ).format(key=key, aside=aside, table=table, match=match)).fetchall()
    orphans = conn.execute(sql.SQL(
        "SELECT count(*) FROM rowcast.predictions p WHERE p.deployment = {} "
        "AND p.source_schema = {} AND p.source_table = {} "
        "AND NOT EXISTS (SELECT 1 FROM {} t WHERE {})"
    ).format(sql.Literal(d.name), sql.Literal(d.schema), sql.Literal(d.table), table,
             match)).fetchone()[0]
    return (rows, [k for k, aside in without if not aside], [k for k, aside in without if aside],
            orphans)


def reconcile(conn: psycopg.Connection, admin: KafkaAdminClient, settings: Settings,
              letters: Iterable[DeadLetter] = ()) -> list[Reconciled]:
    """One report per deployment; ``letters``: the dead-letter topic's records
    (:func:`rowcast.ops.dlq.read_letters`), which account for rows set aside."""
    out = []
    deployments = list_deployments(conn)
    set_aside = set_aside_keys(letters, deployments, settings)
    for d in deployments:
        try:
            rows, missing, aside, orphans = _table_counts(conn, d, set_aside[d.name])
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
        out.append(Reconciled(d.name, d.qualified_table, rows, predicted, len(missing), orphans,
                              learned, max(end - offset, 0), lag, missing[:20],
                              unjoined=unjoined_labels(conn, d), dead_lettered=len(aside),
                              set_aside=[stored_key(k) for k in aside]))
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
        if r.dead_lettered:
            lines.append(f"    rows set aside on the dead-letter topic: {r.dead_lettered} "
                         "(`rowcast dlq list` says why; `rowcast dlq replay` after a fix)")
        if r.unjoined:
            lines.append(f"    labels that never joined their row's features: {r.unjoined} "
                         "(held by the learner until ROWCAST_LABEL_RETENTION_S)")
        if r.missing_sample:
            lines.append(f"    rows without a prediction (first {len(r.missing_sample)}): "
                         f"{r.missing_sample}")
    return "\n".join(lines)
