"""What the operator screens show, sampled in one place: `rowcast status` and the dashboard.

Every ``sample()`` reads each stage once: the replication slot (bytes, seconds, retained WAL),
the scorer's, the learner's (labels not yet learned and checkpointed) and the sink's consumer
groups (per-partition lag, membership), each deployment's model version and online metric, throughput and
commit→prediction latency percentiles from ``rowcast.predictions``, and the deployments (with
``failed``: what a worker recorded in ``rowcast.deployment_failures`` when it could not build a
deployment's model, for the deployment's current generation; ``paused``: why its learner stopped
learning, e.g. a model that became non-finite and was not published). It
keeps the samples of the last ``lag_window_s`` to judge each consumer with Burrow's rules
(:mod:`rowcast.ops.verdict`), and a longer history for the dashboard's charts.

A consumer group with no members is ERROR (its process is down); a partition whose committed
offset did not change for ``lag_stop_after_s`` *while watched* is STOP, so a one-shot
``rowcast status`` can say STALL at most; ``--watch`` and the dashboard see STOP too.

``topic_layout`` lists rowcast's topics whose replication differs from what the settings (or the
cluster's defaults) ask for, e.g. a topic made with one replica before the cluster grew: such a
topic is reported rather than silently used. It is checked at most every ``LAYOUT_EVERY_S``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psycopg
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from rowcast.connectors import heartbeat, versions
from rowcast.connectors.kafka_clients import (
    cluster_defaults,
    expected_layout,
    layout_problems,
    make_admin,
    topic_layouts,
)
from rowcast.connectors.lag import consumer_lag, oldest_unconsumed_age_s, slot_lag
from rowcast.connectors.registry import (
    changed_keys,
    list_deployments,
    list_failures,
    missing_columns,
    missing_tables,
    topic_collisions,
    unpublished_tables,
)
from rowcast.core import metrics
from rowcast.core.settings import Settings
from rowcast.models.features import MISSING_COLUMN
from rowcast.ops.verdict import Sample, Verdict, evaluate, judge, slot_verdict, stall_after

MISSING_TABLE = "missing_table"  # a failure status shows: the deployment's table is gone
NOT_PUBLISHED = "not_published"  # ... its table is there, but none of its changes are streamed
KEY_CHANGED = "key_changed"  # ... its table's primary key is not the one it was deployed with
TOPIC_COLLISION = "topic_collision"  # ... its table's change topic is (or collides with) another's

# kafka-python warns on every describe of faust's group: faust's assignor data is not the
# standard consumer protocol. We only count members, so that warning is noise on every sample.
logging.getLogger("kafka.admin._groups").setLevel(logging.ERROR)

RECENT_SQL = """
SELECT count(*) FILTER (WHERE written_at > now() - interval '10 seconds') / 10.0,
       count(*),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM written_at - source_committed_at) * 1000)
FROM rowcast.predictions WHERE written_at > now() - make_interval(secs => %s)
"""


LAYOUT_EVERY_S = 30.0
KAFKA_ANSWER_S = 10.0  # longest a sample waits for the broker (see Monitor._kafka_part)


class _KafkaClients:
    """The admin client and the reader one sample asks with (made on first use).

    A sample whose questions outlive ``KAFKA_ANSWER_S`` drops its clients for fresh ones: the
    thread still waiting on them keeps them until its calls end, and closes them then."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: Any = None
        self._reader: KafkaConsumer | None = None

    def admin(self) -> Any:
        self._admin = self._admin or make_admin(self.settings)
        return self._admin

    def reader(self) -> KafkaConsumer:
        self._reader = self._reader or make_reader(self.settings)
        return self._reader

    def close(self) -> None:
        admin, reader, self._admin, self._reader = self._admin, self._reader, None, None
        for client in (admin, reader):
            if client is not None:
                client.close()


@dataclass
class _Track:
    """One partition's samples within the window and when its committed offset last moved."""

    samples: deque = field(default_factory=deque)
    last_commit_at: float | None = None
    last_committed: int | None = None


class Monitor:
    """Samples every stage; keeps a window for verdicts and a history for charts."""

    def __init__(self, settings: Settings, history: int = 600) -> None:
        self.settings = settings
        self.tracks: dict[tuple[str, str, int], _Track] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=history)
        self._kafka = _KafkaClients(settings)
        self._asking: threading.Thread | None = None  # a sample's Kafka questions, unanswered
        self._failed: dict[str, str] = {}  # deployments shown failed -> reason, for the metric
        self._paused: dict[str, str] = {}  # deployments shown paused -> reason, for the metric
        self._layout: tuple[float, list[str] | None] | None = None  # (checked at, problems)

    def close(self) -> None:
        self._kafka.close()

    def sample(self, latency_window_s: float = 300.0) -> dict[str, Any]:
        now = time.time()
        dsn = self.settings.postgres_dsn.get_secret_value()
        with psycopg.connect(dsn, autocommit=True) as conn:
            heartbeat.beat(conn, self.settings.slot_name)  # ages grow even when the source is down
            slot = slot_lag(conn, self.settings.slot_name)
            deployments = list_deployments(conn)
            per_s, recent, cuts = conn.execute(RECENT_SQL, (latency_window_s,)).fetchone()
            total = conn.execute("SELECT count(*) FROM rowcast.predictions").fetchone()[0]
            models = {r[0]: r[1:] for r in conn.execute(
                "SELECT deployment, version, samples, metrics FROM rowcast.model_metrics")}
            failures = list_failures(conn)
            missing = missing_columns(conn)
            gone = missing_tables(conn)
            unpublished = unpublished_tables(conn)
            rekeyed = changed_keys(conn)
            colliding = topic_collisions(conn)
            pauses = versions.paused(conn)
            drifts = {r[0]: {"count": r[1], "last_at": r[2], "last_label": r[3],
                             "last_version": r[4]} for r in conn.execute(DRIFTS_SQL)}
        stages, layout = self._kafka_part(deployments, now)
        snapshot = {
            "at": now,
            "slot": None if slot is None else {
                "name": slot.slot, "behind_bytes": slot.behind_bytes,
                "behind_seconds": round(slot.behind_seconds, 2),
                "retained_bytes": slot.retained_bytes, "active": slot.active,
                "verdict": slot_verdict(slot.behind_seconds, self.settings.lag_window_s,
                                        self.settings.lag_stop_after_s).name},
            "stages": stages,
            "predictions": {"total": total, "per_second": float(per_s or 0), "recent": recent},
            "latency_ms": dict(zip(("p50", "p95", "p99"),
                                   [round(c, 1) for c in cuts] if cuts else [None] * 3,
                                   strict=True)),
            "deployments": [_deployment(d, models.get(d.name),
                                        _current(d, failures.get(d.name))
                                        or _missing(d, missing, gone, now)
                                        or _unfollowed(d, unpublished, rekeyed, now)
                                        or _colliding(d, colliding, now),
                                        pauses.get(d.name), drifts.get(d.name))
                            for d in deployments],
            "topic_layout": layout,
        }
        for d in snapshot["deployments"]:  # the dashboard's /metrics says it too
            if d["failed"] is not None:
                metrics.DEPLOYMENT_FAILED.labels(d["name"], d["failed"]["reason"]).set(1)
                self._failed[d["name"]] = d["failed"]["reason"]
            elif d["name"] in self._failed:
                metrics.DEPLOYMENT_FAILED.labels(d["name"], self._failed.pop(d["name"])).set(0)
            if d["paused"] is not None:
                metrics.MODEL_PAUSED.labels(d["name"], d["paused"]["reason"]).set(1)
                self._paused[d["name"]] = d["paused"]["reason"]
            elif d["name"] in self._paused:
                metrics.MODEL_PAUSED.labels(d["name"], self._paused.pop(d["name"])).set(0)
        self.history.append(snapshot)
        return snapshot

    def _kafka_part(self, deployments: list[Any], now: float
                    ) -> tuple[list[dict[str, Any]], list[str] | None]:
        """Each stage's lag and verdict, and the topic layout, asked of the broker with a
        deadline: ``KAFKA_ANSWER_S`` for all of it.

        Why: a broker that stops answering (frozen, a hung disk) held one sample for 90 s with
        kafka-python's request timeouts, and kafka-python 3.0.12's blocking calls can wait with
        no deadline at all (its issue 3121). That is when operators look: they get UNKNOWN with
        the reason, and PostgreSQL's side of the sample, at once. While an earlier sample's
        questions are still unanswered, no new ones are asked (one waiting thread at most)."""
        wanted = self.settings.stages(deployments)
        if self._asking is not None and self._asking.is_alive():
            return self._unanswered(wanted, "still has not answered an earlier sample"), None
        clients, box = self._kafka, {}

        def ask() -> None:
            try:
                box["stages"] = [self._stage(clients, st.name, st.group, now, list(st.topics))
                                 for st in wanted]
                box["layout"] = self._topic_layout(clients, deployments, now)
            except BaseException as exc:  # raised in the caller's thread
                box["error"] = exc
            finally:
                if box.get("late"):  # the sample went on without it: its clients go with it
                    clients.close()

        asking = threading.Thread(target=ask, name="rowcast-monitor-kafka", daemon=True)
        asking.start()
        asking.join(KAFKA_ANSWER_S)
        if asking.is_alive():
            box["late"] = True
            if not asking.is_alive():  # it ended just now, before it could see it was late
                clients.close()
            self._asking, self._kafka = asking, _KafkaClients(self.settings)
            return self._unanswered(wanted, f"did not answer within {KAFKA_ANSWER_S:.0f} s"), None
        if "error" in box:
            raise box["error"]
        return box["stages"], box["layout"]

    @staticmethod
    def _unanswered(stages: list[Any], why: str) -> list[dict[str, Any]]:
        return [{"stage": st.name, "group": st.group, "lag": None, "verdict": "UNKNOWN",
                 "error": f"Kafka {why}", "partitions": []} for st in stages]

    def _stage(self, clients: _KafkaClients, name: str, group: str, now: float,
               topics: list[str]) -> dict[str, Any]:
        try:
            admin = clients.admin()
            partitions = consumer_lag(admin, group, topics) if topics else []
            members = _members(admin, group)
            ages = oldest_unconsumed_age_s(clients.reader(), partitions, int(now * 1000))
        except KafkaError as exc:  # the broker cannot tell now (e.g. its coordinator loads)
            clients.close()
            return {"stage": name, "group": group, "lag": None, "verdict": "UNKNOWN",
                    "error": str(exc), "partitions": []}
        verdicts = [self._judge(group, p.topic, p.partition, p.committed, p.log_end, now)
                    for p in partitions]
        verdict = judge(verdicts, process_up=members > 0 or not topics)
        lag = sum(p.lag for p in partitions)
        oldest = round(max(ages.values()), 2) if ages else 0.0
        metrics.CONSUMER_VERDICT.labels(group).set(int(verdict))
        metrics.CONSUMER_OLDEST_SECONDS.labels(group).set(oldest)
        for p in partitions:
            metrics.CONSUMER_LAG.labels(group, p.topic, str(p.partition)).set(p.lag)
        return {"stage": name, "group": group, "lag": lag, "verdict": verdict.name,
                "members": members, "oldest_unconsumed_s": oldest,
                "partitions": [{"topic": p.topic, "partition": p.partition, "log_end": p.log_end,
                                "committed": p.committed, "lag": p.lag} for p in partitions]}

    def _topic_layout(self, clients: _KafkaClients, deployments: list[Any],
                      now: float) -> list[str] | None:
        """Topics laid out otherwise than rowcast would create them now (None: unknown)."""
        if self._layout is not None and now - self._layout[0] < LAYOUT_EVERY_S:
            return self._layout[1]
        topics = {t for st in self.settings.stages(deployments) for t in st.topics}
        topics |= {self.settings.dlq_topic, self.settings.models_topic}
        try:
            admin = clients.admin()
            problems = layout_problems(topic_layouts(admin, topics),
                                       *expected_layout(self.settings, cluster_defaults(admin)))
        except KafkaError:  # the broker cannot tell now: the next sample asks again
            clients.close()
            return None
        self._layout = (now, problems)
        return problems

    def _judge(self, group: str, topic: str, partition: int, committed: int | None,
               log_end: int, now: float) -> Verdict:
        track = self.tracks.setdefault((group, topic, partition), _Track())
        done = committed if committed is not None else 0
        if track.last_commit_at is None or committed != track.last_committed:
            track.last_commit_at, track.last_committed = now, committed
        track.samples.append(Sample(now, done, log_end))
        while track.samples and track.samples[0].at_s < now - self.settings.lag_window_s:
            track.samples.popleft()
        return evaluate(list(track.samples), now, track.last_commit_at,
                        self.settings.lag_stop_after_s, stall_after(self.settings.lag_window_s))


def _current(d: Any, failure: dict[str, Any] | None) -> dict[str, Any] | None:
    """A failure a worker recorded, if it is of the deployment's current generation."""
    return failure if failure is not None and failure["generation"] == d.generation else None


def _missing(d: Any, missing: dict[str, list[str]], tables: dict[str, list[str]], now: float
             ) -> dict[str, Any] | None:
    """A deployment whose table is gone, or lost a column it names, as a failure of its
    generation (``rowcast status``, the dashboard, ``rowcast_deployment_failed``)."""
    if d.name in tables:
        return {"generation": d.generation, "reason": MISSING_TABLE, "since": now,
                "error": f"table {', '.join(tables[d.name])} is not there any more (renamed or "
                         "dropped): no row of it is scored; deploy again on the table's new "
                         f"name, or `rowcast undeploy {d.name}`"}
    if d.name not in missing:
        return None
    gone = ", ".join(missing[d.name])
    return {"generation": d.generation, "reason": MISSING_COLUMN, "since": now,
            "error": f"column {gone} is not there any more (renamed or dropped; or generated, "
                     "which logical replication does not send): its rows go to "
                     f"the dead-letter topic as {MISSING_COLUMN}; deploy again with the table's "
                     f"columns (or rename it back), then `rowcast backfill {d.name}` scores the "
                     "rows it missed"}


def _unfollowed(d: Any, unpublished: dict[str, list[str]],
                rekeyed: dict[str, tuple[list[str], list[str]]], now: float
                ) -> dict[str, Any] | None:
    """A deployment whose table is there but is not followed as deployed: out of the
    publication (dropped and created again), or keyed by other columns now."""
    if d.name in unpublished:
        return {"generation": d.generation, "reason": NOT_PUBLISHED, "since": now,
                "error": f"table {', '.join(unpublished[d.name])} is not in rowcast's "
                         "publication (dropped and created again, or taken out of it): none of "
                         "its changes are streamed or scored; deploy again to add it back, then "
                         f"`rowcast backfill {d.name}` scores the rows it missed"}
    if d.name in rekeyed:
        was, now_cols = rekeyed[d.name]
        return {"generation": d.generation, "reason": KEY_CHANGED, "since": now,
                "error": f"the primary key of {d.schema}.{d.table} is now "
                         f"({', '.join(now_cols) or 'none'}), deployed with ({', '.join(was)}): "
                         "rows since are stored and learned under the new key, but labels of "
                         "rows scored before it find no features and the _scored view joins on "
                         "the old key; deploy again to follow the new key"}
    return None


def _colliding(d: Any, colliding: dict[str, list[str]], now: float) -> dict[str, Any] | None:
    """A deployment made before ``rowcast.deploy`` refused tables whose topics collide."""
    if d.name not in colliding:
        return None
    return {"generation": d.generation, "reason": TOPIC_COLLISION, "since": now,
            "error": f"tables {'; '.join(colliding[d.name])} have one change topic, or two "
                     "Kafka cannot hold side by side (it reads '.' and '_' alike; characters a "
                     "topic name cannot hold become '_'): their rows mix, or Kafka refuses the "
                     "second topic and the source and workers exit; rename one table and "
                     "deploy again on the new name"}


def _deployment(d: Any, model: tuple | None, failure: dict[str, Any] | None = None,
                pause: versions.Pause | None = None, drift: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """A deployment with its learner's latest version, samples and online metrics, why the
    workers cannot serve it (None when they can, or a redeploy came after the failure) and
    why its learner is paused (None when it learns; the last good version keeps serving)."""
    version, samples, metrics_ = model if model is not None else (None, 0, {})
    failed = None
    if failure is not None and failure["generation"] == d.generation:
        failed = {"reason": failure["reason"], "error": failure["error"],
                  "since": failure["since"]}
    paused = None
    if pause is not None and pause.generation == d.generation:
        paused = {"reason": pause.reason, "error": pause.error, "since": pause.since}
    # as floats: jsonb turns a huge metric (1e300) into an integer no JSON encoder takes
    shown = {k: float(v) for k, v in ((metrics_ or {}).get("progressive") or {}).items()
             if v is not None}
    return {"name": d.name, "table": d.qualified_table, "model": d.model, "version": d.version,
            "target": d.target, "model_version": version, "samples": samples,
            "metrics": shown, "failed": failed, "paused": paused,
            # label committed -> learned, p50/p99 in ms, over the labels of the last version
            "learning_delay_ms": (metrics_ or {}).get("learning_delay_ms"),
            # drift detections (rowcast.model_events) and challengers in shadow (the learner's
            # comparison at its latest version: whole stream and recent window)
            "drift": drift or {"count": 0, "last_at": None, "last_label": None,
                               "last_version": None},
            "challengers": (metrics_ or {}).get("challengers") or {}}


DRIFTS_SQL = """
SELECT DISTINCT ON (deployment) deployment,
       count(*) OVER (PARTITION BY deployment), created_at, at_label, version
  FROM rowcast.model_events WHERE kind = 'drift'
 ORDER BY deployment, id DESC
"""


def make_reader(settings: Settings) -> KafkaConsumer:
    """A group-less consumer that only peeks at the oldest unconsumed record's timestamp."""
    return KafkaConsumer(**settings.kafka_client_config(), group_id=None, enable_auto_commit=False,
                         client_id="rowcast-monitor", fetch_max_wait_ms=100)


def _members(admin: Any, group: str) -> int:
    described = admin.describe_groups([group]).get(group) or {}
    return len(described.get("members") or [])
