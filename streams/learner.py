"""``rowcast learner``: the single owner of each deployment's model.

Each deployment's labels topic has one partition, and learners share one consumer group, so
Kafka gives every deployment to exactly one learner; ``rowcast.model_control.epoch`` fences a
learner that lost its partition but has not noticed yet. On assignment the learner restores the
latest checkpoint of the deployment's generation and seeks to the offset stored with it; then
it applies label events (:class:`rowcast.models.learning.DeploymentLearner`; a label batch
record, header ``rowcast.batch``, is one position: all its events are applied before its offset
can be checkpointed, and one that does not decode goes to the dead-letter topic whole) and, every
``learner_checkpoint_s`` or ``learner_checkpoint_every`` events, writes model, metrics, resume
state, pending features and the next offset in one Postgres transaction (a new model version),
publishes the snapshot to the compacted models topic for the scorers (no more often than its
measured load time allows, :mod:`rowcast.models.cadence`: a big forest is published every few
tens of seconds so a worker spends <= 5 % of its CPU unpickling), and commits the Kafka
offset (only so lag tools see the learner's progress: the truth is the checkpoint); that order is
written once, in :class:`Checkpointer`. The transaction is written behind when it may be
(``learner_write_behind``, :meth:`Checkpointer.hand_off`): by a thread with its own connection
(:mod:`rowcast.streams.write_behind`) while learning goes on, one in flight at most, and what
follows its commit waits for it (:meth:`Learner._settle`).

A model whose state, answer or metrics became non-finite (a finite but huge feature, 1e300,
overflows a scaler's variance) is never checkpointed or published: the learner drops what it
learned since the last checkpoint, records the pause in ``rowcast.model_control`` (status,
dashboard and ``rowcast_model_paused`` show it) and stops consuming that deployment; the last
good version keeps serving. ``rowcast model rollback NAME VERSION`` resumes it: the labels
applied since the last checkpoint are then replayed *guarded* (each row checked; the one that
breaks the model is refused, counted ``non_finite`` and dead-lettered as ``non_finite_model``).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import psycopg
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from rowcast.connectors import operations, position_history, versions
from rowcast.connectors.dead_letters import DeadLetterWriter
from rowcast.connectors.kafka_clients import ensure_deployment_topics
from rowcast.connectors.pending_labels import Changes, PgPending, has_expired
from rowcast.connectors.postgres import connect
from rowcast.connectors.registry import list_deployments
from rowcast.connectors.versions import Checkpoint, Fenced, Redeployed
from rowcast.core import liveness, metrics
from rowcast.core.dead_letter import DeadLetter
from rowcast.core.errors import ConfigError, DecodeError, SnapshotError
from rowcast.core.label_events import BATCH_HEADER, LabelEvent, decode_batch
from rowcast.core.model_record import ModelRecord
from rowcast.core.settings import Settings
from rowcast.models.cadence import WORKER_LOAD_SHARE, LoadCost, publish_interval
from rowcast.models.catalog import get_model
from rowcast.models.deployment import Deployment
from rowcast.models.learning import DeploymentLearner, LearnerState
from rowcast.models.operations import ModelEvent
from rowcast.models.scoring import OnlineModel
from rowcast.models.snapshot import dump_snapshot, load_snapshot
from rowcast.streams.write_behind import WriteBehind

log = logging.getLogger(__name__)


@dataclass
class Owned:
    """A deployment this learner owns right now."""

    tp: TopicPartition
    learner: DeploymentLearner
    pending: PgPending
    epoch: int
    offset: int  # next labels-topic offset to apply
    checkpointed_offset: int
    last_checkpoint: float = field(default_factory=time.monotonic)
    applied_rollback: int | None = None  # restored straight from a requested rollback version
    # the group's committed offset (lag display only); None = not known to match the checkpoint
    committed_offset: int | None = None
    last_commit_try: float = 0.0
    streams_known: bool = False  # the commit-order merge knows which partitions gate it
    guard_to: int = 0  # labels below this offset are applied guarded (after a non-finite pause)
    since_checkpoint: int = 0  # label events (not records: a batch holds many) read since
    # publication to the scorers follows the snapshot's load cost (rowcast.models.cadence)
    load_cost: LoadCost = field(default_factory=LoadCost)
    last_publish: float = 0.0
    unpublished: tuple[int, int, bytes] | None = None  # (version, samples, snapshot) not sent yet
    # the next checkpoint is written in place and in full: an operator's request, or rows
    # that outlived the retention, to apply under the control row's lock
    in_place: bool = False
    # its checkpoint written behind failed: handled at the top of the next poll (restore the
    # last committed checkpoint), never in the middle of work on another deployment
    failed: Exception | None = None


# the write-behind connection's application_name: operators tell it from the learner's own
CHECKPOINT_CONNECTION = "rowcast learner checkpoints"


@dataclass
class InFlight:
    """A checkpoint handed to the write-behind thread (:meth:`Checkpointer.hand_off`): what
    follows its commit (the version known, publication, the offset commit) waits for it."""

    owned: Owned
    future: Future  # the version written, or None: an operator's request came first
    changes: Changes  # the pending changes it writes (taken back if it wrote nothing)
    events: int  # label events applied since the checkpoint before (learner.changes)
    offset: int
    samples: int
    blob: bytes
    started: float


def is_label_batch(headers: object) -> bool:
    return any(name == BATCH_HEADER for name, _ in (headers or ()))  # type: ignore[attr-defined]


def read_label_record(headers: object, value: bytes | None) -> list[LabelEvent]:
    """A labels-topic record's events: a label batch (header ``rowcast.batch``), or one event
    (older scorers). Raises :class:`DecodeError` when the record as a whole does not decode."""
    if value is None:
        raise DecodeError("not a label event: the record has no value")
    if is_label_batch(headers):
        return decode_batch(value)
    return [LabelEvent.from_json(value)]


def refused_letter(event: LabelEvent, reason: str, events: list[LabelEvent],
                   spans: list[tuple[int, Any]]) -> DeadLetter:
    """The dead letter for one event the guarded replay refused: the record it came in names
    where it was; the value is that event alone, as a single-event record, so replaying the
    letter teaches that row only (a label batch holds other rows, learned already)."""
    at = next((i for i, e in enumerate(events) if e is event), None)
    if at is None:  # it waited in the commit-order merge since an earlier poll
        return DeadLetter("learner", "non_finite_model", reason, key=event.key_bytes(),
                          value=event.to_json())
    start, r = next((s, r) for s, r in reversed(spans) if s <= at)
    if not is_label_batch(r.headers):
        return DeadLetter("learner", "non_finite_model", reason, r.topic, r.partition, r.offset,
                          r.key, r.value)
    return DeadLetter("learner", "non_finite_model", reason, r.topic, r.partition, r.offset,
                      event.key_bytes(), event.to_json(),
                      context={"label_batch_index": at - start})


class ModelPaused(Exception):
    """The deployment's learning is paused (recorded in Postgres) until a rollback."""


def snapshot_payload(learner: DeploymentLearner) -> dict:
    """What a snapshot holds: the estimator (all a scorer needs) and the champion's model name;
    then, pickled apart as ``learner_state`` (bytes a scorer never unpickles: it would load
    river's metrics and drift detectors -- scipy, ~90 MB of RSS -- and every challenger's model
    on each worker), the running metrics and the model operations, so a restart or a rollback
    resumes all of them exactly. The whole blob is signed (:mod:`rowcast.models.snapshot`)."""
    return {"estimator": learner.model.estimator, "model": learner.champion_model,
            "learner_state": pickle.dumps({"progressive": learner.progressive,
                                           "served": learner.served,
                                           "operations": learner.operations},
                                          protocol=pickle.HIGHEST_PROTOCOL)}


def restore_payload(learner: DeploymentLearner, payload: dict) -> None:
    """The inverse of :func:`snapshot_payload` (older snapshots hold the metrics directly, and
    those made before model operations none: a fresh detector, no challengers)."""
    if "learner_state" in payload:  # verified with the blob that holds it
        payload = {**payload, **pickle.loads(payload["learner_state"])}  # noqa: S301
    learner.model.estimator = payload["estimator"]
    learner.progressive, learner.served = payload["progressive"], payload["served"]
    model = payload.get("model") or learner.deployment.model
    if model != learner.champion_model:
        learner.model.spec = get_model(model)
        learner.champion_model = model
    operations = payload.get("operations")
    if operations is not None:
        learner.operations = operations



class PollSize:
    """How many records to ask a poll for, so that about ``events`` label events come at once.

    A scorer's label batch record holds hundreds of events, a single-event record one; the
    consumer only bounds records. Learned from what the polls brought (a moving average of
    events per record), starting at one record.

    >>> size = PollSize(2000)
    >>> size.records()
    1
    >>> size.saw(records=1, events=500)
    >>> size.records()
    4
    """

    def __init__(self, events: int) -> None:
        self.events = events
        self.per_record: float | None = None

    def records(self) -> int:
        if self.per_record is None:
            return 1
        return max(1, min(self.events, round(self.events / self.per_record)))

    def saw(self, records: int, events: int) -> None:
        if records <= 0:
            return
        ratio = max(events / records, 1.0)
        self.per_record = ratio if self.per_record is None else 0.8 * self.per_record + 0.2 * ratio

class Learner(ConsumerRebalanceListener):
    def __init__(self, settings: Settings, conn: psycopg.Connection, consumer: KafkaConsumer,
                 producer: KafkaProducer, key: bytes) -> None:
        self.settings = settings
        self.conn = conn
        self.consumer = consumer
        self.producer = producer
        self.key = key
        self.dead_letters = DeadLetterWriter(producer, settings.dlq_topic)
        self.checkpoints = Checkpointer(self)
        # checkpoints written while learning goes on; one in flight at most (``inflight``)
        self.behind = WriteBehind(lambda: connect(settings,
                                                  application_name=CHECKPOINT_CONNECTION)) \
            if settings.learner_write_behind else None
        self.inflight: InFlight | None = None
        self.deployments: dict[str, Deployment] = {}
        self.active: dict[str, Owned] = {}
        self.subscribed: tuple[str, ...] = ()
        self.paused: set[TopicPartition] = set()  # assigned, but its checkpoint is unusable
        self.unbuildable: dict[str, str] = {}  # deployment -> generation whose model won't build
        self.broken: dict[str, str] = {}  # deployment -> generation paused until a rollback
        self._rejoined_for: set[str] = set()
        self._subscribed_at = 0.0
        # records per poll for about learner_batch_size events (a batch record holds hundreds)
        self._poll_size = PollSize(settings.learner_batch_size)
        self.prefix = f"{settings.topic_prefix}.labels."

    # -- group membership ------------------------------------------------------------------
    def refresh(self) -> None:
        self.deployments = {d.name: d for d in list_deployments(self.conn)}
        for name, owned in list(self.active.items()):
            d = self.deployments.get(name)
            if d is not None and d.generation != owned.learner.deployment.generation:
                self._switch_generation(owned, d)  # redeployed: no checkpoint of the old one
        topics = tuple(sorted(self.settings.labels_topic(n) for n in self.deployments))
        if topics != self.subscribed:
            log.info("learning %d deployment(s): %s", len(topics), sorted(self.deployments))
            if topics:
                # a deployment made with the SQL function has no topics until a worker makes
                # them: made here too (rowcast's layout, labels on one partition), since a
                # subscription never creates one (kafka_clients.make_consumer)
                ensure_deployment_topics(self.settings, sorted(self.deployments))
                self.consumer.subscribe(topics=list(topics), listener=self)
            else:
                self.consumer.unsubscribe()
            self.subscribed = topics
            self._subscribed_at = time.monotonic()
        self._rejoin_for_unowned_topics()
        for owned in list(self.active.values()):
            name = owned.learner.deployment.name
            self.checkpoints.configure(owned)  # challengers added or removed since
            if owned.failed is None and (
                    versions.rollback_target(self.conn, name) is not None
                    or operations.promotion_pending(self.conn, name)
                    or has_expired(self.conn, name, self.settings.label_retention_s)):
                # applies the rollback / the promotion (no label needed) / expires and counts
                # what outlived the retention (in place: checkpoints written behind do not)
                owned.in_place = True
                self._checkpoint(owned)
        for tp in list(self.paused):
            name = tp.topic[len(self.prefix):]
            d = self.deployments.get(name)
            redeployed = d is not None and d.generation not in (
                self.unbuildable.get(name, d.generation), self.broken.get(name, d.generation))
            if redeployed or versions.rollback_target(self.conn, name) is not None:
                self.unbuildable.pop(name, None)
                self.broken.pop(name, None)
                self.paused.discard(tp)
                self.on_partitions_assigned([tp])
                if tp not in self.paused:
                    self.consumer.resume(tp)

    def _rejoin_for_unowned_topics(self) -> None:
        """A labels topic created just before the group formed can be left out of the
        assignment ("No partition metadata"), and kafka-python 3.0 was seen not to rejoin when
        its metadata arrived: the deployment then had no learner. Once per such topic, a
        member that does not own it re-subscribes, which makes the group assign again."""
        if not self.subscribed or time.monotonic() - self._subscribed_at < 5.0:
            return
        owned = {tp.topic for tp in self.consumer.assignment()}
        unowned = [t for t in self.subscribed if t not in owned and t not in self._rejoined_for
                   and self.consumer.partitions_for_topic(t)]
        if unowned:
            log.info("re-joining the learner group so %s get an owner", unowned)
            self._rejoined_for |= set(unowned)
            self.consumer.unsubscribe()
            self.consumer.subscribe(topics=list(self.subscribed), listener=self)
            self._subscribed_at = time.monotonic()

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._settle(dropping=revoked)
        self.paused -= set(revoked)
        for tp in revoked:
            owned = self.active.pop(tp.topic[len(self.prefix):], None)
            if owned is not None:
                self._checkpoint(owned, dropping=True)
                log.info("learner hands over %s", owned.learner.deployment.name)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            try:
                self._restore(tp)
            except SnapshotError as exc:
                # never unpickle what fails verification; the other deployments go on
                name = tp.topic[len(self.prefix):]
                log.error("cannot restore %s: %s. Not learning it until its checkpoint is "
                          "fixed (rowcast model rollback NAME VERSION to a good version)",
                          name, exc)
                metrics.DEAD_LETTERS.labels("learner", "bad_snapshot").inc()
                self.consumer.pause(tp)
                self.paused.add(tp)
                d = self.deployments.get(name)
                if d is not None:
                    self._record_pause(name, d.generation, "bad_snapshot", str(exc))
            except ModelPaused as exc:
                log.warning("%s; the last good version keeps serving", exc)
                self.consumer.pause(tp)
                self.paused.add(tp)
            except ConfigError as exc:
                self._set_aside(tp, exc)

    def _set_aside(self, tp: TopicPartition, exc: ConfigError) -> None:
        """A deployment whose model cannot be built (e.g. a custom module:factory that does
        not import) is not learned until it is redeployed; the other deployments go on."""
        name = tp.topic[len(self.prefix):]
        log.error("cannot learn %s: %s. Fix the model and deploy again", name, exc)
        d = self.deployments.get(name)
        self.unbuildable[name] = d.generation if d is not None else ""
        self.active.pop(name, None)
        self.consumer.pause(tp)
        self.paused.add(tp)

    def _restore(self, tp: TopicPartition) -> None:
        name = tp.topic[len(self.prefix):]
        d = self.deployments.get(name)
        if d is None:
            return
        started = time.monotonic()
        epoch = versions.claim(self.conn, name)
        ck = versions.latest(self.conn, name, d.generation)
        pending = PgPending(self.conn, name, d.generation)
        learner = DeploymentLearner.fresh(d, pending)
        offset, target = 0, versions.rollback_target(self.conn, name)
        pause = versions.paused(self.conn, name).get(name)
        if pause is not None and pause.generation == d.generation and target is None:
            self.broken[name] = d.generation
            metrics.MODEL_PAUSED.labels(name, pause.reason).set(1)
            raise ModelPaused(f"learning of {name} is paused ({pause.reason}: {pause.error}); "
                              f"rowcast model rollback {name} VERSION resumes it")
        if ck is not None:
            # resume position and state come from the latest checkpoint; the model too, unless
            # a rollback is pending (then from that version: also the way out of a bad snapshot
            # or of a model that became non-finite; version 0 is the fresh model built above)
            if target != versions.FRESH:
                source = ck if target is None else versions.get(self.conn, name, target)
                if source.snapshot is None:
                    raise SnapshotError(f"version {source.version} has no snapshot any more")
                payload = load_snapshot(source.snapshot, self.key)
                learner.model = OnlineModel(d, learner.model.spec, payload["estimator"],
                                            ck.version, source.samples)
                restore_payload(learner, payload)
            else:
                learner.model.version = ck.version
            learner.state = LearnerState.from_json(ck.state)
            offset = ck.labels_offset
        elif target != versions.FRESH:
            target = None  # a version of an earlier generation: this one starts fresh anyway
        position_history.follow_learner(self.conn, name, learner.state)  # positions of this cluster only
        self.consumer.seek(tp, offset)
        self.active[name] = Owned(tp, learner, pending, epoch, offset, offset,
                                  applied_rollback=target,
                                  guard_to=versions.guard_to(self.conn, name))
        self.checkpoints.configure(self.active[name])  # challengers asked for before labels
        took = time.monotonic() - started
        metrics.RESTORE_SECONDS.labels(name).set(took)
        log.info("learner owns %s: restored version %s (%d samples) in %.3f s, resuming at "
                 "offset %d", name, ck.version if ck else "none (fresh model)",
                 learner.model.samples_learned, took, offset)

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        next_refresh = 0.0
        while not stop.is_set():
            liveness.beat()
            if time.monotonic() >= next_refresh:
                self.refresh()
                next_refresh = time.monotonic() + self.settings.deployment_refresh_s
            if not self.subscribed:
                stop.wait(self.settings.deployment_refresh_s)
                continue
            self.poll_once()
        self._settle()
        for owned in list(self.active.values()):
            self._checkpoint(owned)
            self.checkpoints.publish_due(owned, force=True)  # the last version, for the scorers
        if self.behind is not None:
            self.behind.close()

    def poll_once(self) -> int:
        self._settle(block=False)
        self._handle_failed()
        batch = self.consumer.poll(timeout_ms=100, max_records=self._poll_size.records())
        applied = polled = n_events = 0
        waited = {name for name, o in self.active.items() if len(o.learner.state.merge)}
        for tp, records in batch.items():
            owned = self.active.get(tp.topic[len(self.prefix):])
            records = [r for r in records if owned is not None and r.offset >= owned.offset]
            if owned is None or owned.failed is not None or not records:
                continue  # (a failed write: restored, and its records read again, next poll)
            polled += len(records)
            events, spans = [], []
            for r in records:
                try:
                    decoded = read_label_record(r.headers, r.value)
                except DecodeError as exc:  # the whole record: its events cannot be told apart
                    reason = "bad_label_batch" if is_label_batch(r.headers) else "bad_label_event"
                    self.dead_letters.send(DeadLetter("learner", reason, str(exc), r.topic,
                                                      r.partition, r.offset, r.key, r.value))
                    continue
                spans.append((len(events), r))
                events += decoded
            n_events += len(events)
            self._follow_generation(owned, events)
            if not owned.streams_known:  # not in the rebalance callback: it fetches metadata
                self._expect_streams(owned.learner)
                owned.streams_known = True
            learned = owned.learner.apply(events, guarded=records[0].offset < owned.guard_to)
            waited.discard(owned.learner.deployment.name)
            for event, reason in owned.learner.refused:  # learning it made the model non-finite
                self.dead_letters.send(refused_letter(event, reason, events, spans))
            if owned.learner.refused:  # acknowledged before the checkpoint marks them learned
                owned.learner.refused.clear()
                self.producer.flush(timeout=30)
            owned.offset = records[-1].offset + 1  # a batch record is one position: all applied
            owned.since_checkpoint += len(events)
            applied += len(records)
            metrics.LEARNED.labels(owned.learner.deployment.name).inc(learned)
        self._poll_size.saw(polled, n_events)
        for name in waited:  # no records for it this time: release what waited too long
            owned = self.active.get(name)
            if owned is not None:
                metrics.LEARNED.labels(name).inc(owned.learner.apply([]))
        now = time.monotonic()
        for owned in list(self.active.values()):
            self.checkpoints.publish_due(owned)
            if owned.failed is not None:
                continue
            due = owned.offset - owned.checkpointed_offset
            if owned.in_place or due and (
                    owned.since_checkpoint >= self.settings.learner_checkpoint_every
                    or now - owned.last_checkpoint >= self.settings.learner_checkpoint_s):
                self._checkpoint(owned, behind=True)
            elif (owned.committed_offset != owned.checkpointed_offset
                  and now - owned.last_commit_try >= self.settings.learner_checkpoint_s):
                self.checkpoints.commit_offset(owned)  # e.g. restored from a checkpoint whose commit failed
        return applied

    def _follow_generation(self, owned: Owned, events: list[LabelEvent]) -> None:
        """A redeploy starts a new model: when events of another generation show up, re-read
        the registry, and start fresh if the deployment really changed. Watermarks carry no
        generation. (Per label event: the generation is a property that formats a string, so
        it is read once, not once per event.)"""
        current = owned.learner.deployment
        generation = current.generation
        if all(e.generation == generation or e.kind == "watermark" for e in events):
            return
        self.deployments = {d.name: d for d in list_deployments(self.conn)}
        d = self.deployments.get(current.name)
        if d is not None and d.generation != current.generation:
            self._switch_generation(owned, d)

    def _switch_generation(self, owned: Owned, d: Deployment) -> None:
        """Learn a fresh model of the new generation from where the old one stopped: no event
        of the new generation was applied yet (the first one triggers this), so the offset is
        right; the next checkpoint is the new generation's first. The old generation's
        unsaved learning is dropped: its checkpoint would be refused (``Redeployed``)."""
        self._settle()
        if owned.failed is not None:  # its last write failed: the next poll restores it
            return
        log.info("%s was redeployed (generation %s): learning a fresh model", d.name,
                 d.generation)
        owned.pending.forget()
        owned.pending = PgPending(self.conn, d.name, d.generation)
        watermarks = dict(owned.learner.state.merge.watermarks)  # source positions stay true
        try:
            owned.learner = DeploymentLearner.fresh(d, owned.pending)
        except ConfigError as exc:
            self._set_aside(owned.tp, exc)
            return
        owned.learner.state.merge.watermarks = watermarks
        owned.streams_known = False
        owned.applied_rollback = None
        owned.load_cost = LoadCost()  # another model: its snapshots cost what they cost
        self.active[d.name] = owned

    def _checkpoint(self, owned: Owned, dropping: bool = False, behind: bool = False) -> None:
        """Checkpoint ``owned`` now; with ``behind``, in the write-behind thread when it may be
        (:meth:`Checkpointer.hand_off`). Whatever is in flight settles first, so checkpoints
        commit in the order they were taken."""
        self._settle(dropping=[owned.tp] if dropping else ())
        if owned.failed is not None:  # its write in flight failed: the next poll restores it
            return
        try:
            if behind and self.checkpoints.hand_off(owned):
                return
            if not self.checkpoints.write(owned, dropping):
                self._pause_broken(owned, owned.learner.health() or "non-finite", dropping)
        except (Redeployed, Fenced, psycopg.Error) as exc:
            self._checkpoint_failed(owned, exc, dropping)

    def _settle(self, block: bool = True, dropping: Collection[TopicPartition] = ()) -> None:
        """The checkpoint in flight, if any, once it is done (waited for with ``block``): what
        follows its commit (:meth:`Checkpointer.landed`). If it wrote nothing (an operator's
        request came first), its changes are taken back and the next checkpoint is written in
        place. If it failed (any error: a restore drops all that is in memory, so that is
        safe), the deployment is marked ``failed``: :meth:`_handle_failed` restores it at the
        top of the next poll, not here, where a caller may be in the middle of work on another
        deployment (a deployment handed over, ``dropping``, is let go at once)."""
        job = self.inflight
        if job is None or (not block and not job.future.done()):
            return
        self.inflight = None
        owned = job.owned
        try:
            version = job.future.result()
        except Exception as exc:  # noqa: BLE001 -- a failed checkpoint, whatever failed
            if owned.tp in dropping:
                self._checkpoint_failed(owned, exc, dropping=True)
            else:
                owned.failed = exc
            return
        if version is None:
            owned.pending.take_back(job.changes)
            owned.learner.changes += job.events
            owned.in_place = True
            return
        self.checkpoints.landed(job, version, owned.tp in dropping)

    def _handle_failed(self) -> None:
        """Restore (or let go of) the deployments whose checkpoint written behind failed."""
        for owned in list(self.active.values()):
            exc, owned.failed = owned.failed, None
            if exc is not None:
                self._checkpoint_failed(owned, exc, dropping=False)

    def _checkpoint_failed(self, owned: Owned, exc: Exception, dropping: bool) -> None:
        d = owned.learner.deployment
        if isinstance(exc, Redeployed):
            # redeployed under us, and no other learner claimed it: while the partition is
            # ours, go on with the new generation (dropping it here left it unlearned until
            # a restart)
            self.active.pop(d.name, None)
            self.deployments = {x.name: x for x in list_deployments(self.conn)}
            current = self.deployments.get(d.name)
            if dropping or current is None or owned.tp not in self.consumer.assignment():
                log.warning("%s; letting go of it", exc)
            else:
                log.info("%s; learning generation %s", exc, current.generation)
                self._switch_generation(owned, current)
        elif isinstance(exc, Fenced):
            log.warning("%s; letting go of it", exc)
            self.active.pop(d.name, None)
        else:
            log.error("checkpoint of %s failed (%s); restoring the last one", d.name, exc)
            self.active.pop(d.name, None)
            if not dropping:
                self._recover(owned.tp)

    def _expect_streams(self, learner: DeploymentLearner) -> None:
        """Tell the commit-order merge which change-topic partitions gate learning: every
        partition of the deployment's table's topic (and of its labels table's)."""
        merge, d = learner.state.merge, learner.deployment
        merge.ordered = self.settings.source_watermarks
        topics = [self.settings.source_topic(d.schema, d.table)]
        if d.labels is not None:
            topics.append(self.settings.source_topic(d.labels.schema, d.labels.table))
        streams = set(merge.expected)
        for topic in topics:
            partitions = self.consumer.partitions_for_topic(topic) or ()
            streams |= {f"{topic}:{p}" for p in partitions}
        merge.expect(streams)

    def _pause_broken(self, owned: Owned, reason: str, dropping: bool) -> None:
        """The model became non-finite: never checkpoint or publish it. Drop what was learned
        since the last checkpoint, stop consuming, record why (for status and the next owner)
        and the offsets to replay guarded once ``rowcast model rollback`` resumes it."""
        d = owned.learner.deployment
        self._settle(dropping=[owned.tp] if dropping else ())
        if owned.failed is not None:  # its last write failed: the next poll restores it
            return
        log.error("%s: the model became non-finite (%s); not checkpointed or published, version "
                  "%d keeps serving. Learning is paused: `rowcast model rollback %s %d` resumes "
                  "it and refuses the row that breaks it", d.name, reason,
                  owned.learner.model.version, d.name, owned.learner.model.version)
        self.active.pop(d.name, None)
        owned.pending.forget()
        self.broken[d.name] = d.generation
        if not dropping:
            self.consumer.pause(owned.tp)
            self.paused.add(owned.tp)
        metrics.MODEL_PAUSED.labels(d.name, "non_finite").set(1)
        try:
            with self.conn.transaction():
                versions.lock_control(self.conn, d.name, owned.epoch, d.generation)
                versions.pause(self.conn, d.name, d.generation, "non_finite", reason,
                               guard_to_offset=owned.offset)
        except Fenced as exc:
            log.warning("%s; letting go of it", exc)
        except psycopg.Error as exc:  # still paused here; status cannot tell until a restart
            log.error("could not record the pause of %s: %s", d.name, exc)

    def _record_pause(self, name: str, generation: str, reason: str, error: str) -> None:
        metrics.MODEL_PAUSED.labels(name, reason).set(1)
        try:
            versions.pause(self.conn, name, generation, reason, error)
        except psycopg.Error as exc:
            log.error("could not record the pause of %s: %s", name, exc)

    def _recover(self, tp: TopicPartition) -> None:
        """After a failed checkpoint: reconnect if needed and resume from the last good one."""
        while True:
            try:
                if self.conn.closed or self.conn.broken:
                    self.conn = psycopg.connect(self.settings.postgres_dsn.get_secret_value(),
                                                autocommit=True)
                self._restore(tp)
                return
            except psycopg.Error as exc:
                log.error("restore failed (%s); retrying in 1 s", exc)
                time.sleep(1.0)


class Checkpointer:
    """Makes one deployment's learning durable. The commit order, in one place:

    1. **health**: a model whose state, answer or metrics became non-finite is never written
       (the learner pauses it; the last good version keeps serving);
    2. **one Postgres transaction**: lock the control row (the epoch and generation fence a
       learner that lost the deployment), apply a requested rollback, flush the pending labels
       (features waiting, labels held, rows learned; expiring what outlived the retention), then
       the new version row -- signed snapshot, metrics, resume state (high-water marks, the
       commit-order merge's buffer and watermarks) and the labels-topic offset to resume from --
       its latest-version pointer, and one bounded step of history thinning;
    3. **publish** the snapshot to the compacted models topic (a failure only delays the
       scorers' hot swap until the next version);
    4. **commit** the labels-topic offset to the consumer group (lag display only: the
       checkpoint is the position of record).

    A checkpoint that only moved positions (watermarks consumed, events still waiting for
    them) does step 2 as an in-place update of the latest version and step 4 (:meth:`advance`):
    an idle deployment gains no versions. Restoring reads back exactly what step 2 wrote, so a
    kill -9 anywhere replays from the offset with the state that goes with it.
    """

    def __init__(self, owner: Learner) -> None:
        self.owner = owner  # its connection (replaced after a reconnect), clients, settings

    def write(self, owned: Owned, dropping: bool = False) -> bool:
        """One checkpoint, in the order the class states; True once it is durable.
        Raises :class:`Fenced` (``Redeployed``) or ``psycopg.Error`` for the caller to handle;
        returns False when the model is broken (the caller pauses it: nothing was written)."""
        learner = owned.learner
        d = learner.deployment
        started = time.monotonic()
        if learner.changes == 0 and learner.model.version > 0 and not owned.in_place \
                and self.advance(owned, dropping):
            return True
        owned.in_place = False
        if learner.health() is not None:
            return False
        conn = self.owner.conn
        with conn.transaction():
            control = versions.lock_control(conn, d.name, owned.epoch, d.generation)
            if control.paused_reason is not None:  # resumed (rollback): learning again
                versions.clear_pause(conn, d.name)
            note = None
            if control.rollback_to is not None:
                if control.rollback_to == owned.applied_rollback:  # done at restore
                    note = f"rolled back to version {control.rollback_to}"
                else:
                    try:
                        note = self.roll_back(learner, control.rollback_to)
                    except SnapshotError as exc:
                        log.error("cannot roll %s back to version %d: %s", d.name,
                                  control.rollback_to, exc)
                versions.clear_rollback(conn, d.name)
            owned.applied_rollback = None
            expired, unjoined = owned.pending.flush(self.owner.settings.label_retention_s)
            learner.state.counters["expired"] += expired
            learner.state.counters["unjoined"] += unjoined
            # back to version 0, the operators' challengers start afresh beside the fresh model
            promoted = self.operate(owned, rolled_back=note is not None
                                    and control.rollback_to != versions.FRESH)
            blob = dump_snapshot(snapshot_payload(learner), self.owner.key)
            version = versions.write(conn, Checkpoint(
                d.name, 0, d.generation, learner.champion_model, blob,
                learner.model.samples_learned, learner.metrics(), learner.state.to_dict(),
                owned.offset, note), self.owner.settings.model_versions_keep)
            self.record_operations(owned, version, promoted)
        if control.paused_reason is not None:
            metrics.MODEL_PAUSED.labels(d.name, control.paused_reason).set(0)
        self._taken(owned)
        self._committed(owned, version, learner.model.samples_learned, blob, owned.offset,
                        started, dropping)
        return True

    @staticmethod
    def _taken(owned: Owned) -> None:
        """The checkpoint was taken: count anew towards the next one."""
        learner = owned.learner
        learner.changes = 0
        metrics.observe_counts(metrics.LEARNING_DELAY_SECONDS,
                               {us / 1e6: n for us, n in learner.delays_us.items()})
        learner.delays_us.clear()
        owned.since_checkpoint = 0
        owned.last_checkpoint = time.monotonic()

    def _committed(self, owned: Owned, version: int, samples: int, blob: bytes, offset: int,
                   started: float, dropping: bool) -> None:
        """What follows a checkpoint's commit, in place or behind: the version known, then
        publication and the offset commit (``dropping``: handing the deployment over, from the
        rebalance callback, where kafka-python cannot commit), then the gauges."""
        learner = owned.learner
        name = learner.deployment.name
        learner.model.version = version
        owned.checkpointed_offset = offset
        owned.unpublished = (version, samples, blob)
        self.publish_due(owned, force=dropping)
        if not dropping:
            self.commit_offset(owned)
        metrics.CHECKPOINT_SECONDS.observe(time.monotonic() - started)
        metrics.MODEL_VERSION.labels(name).set(version)
        for metric, value in learner.progressive.values().items():
            metrics.MODEL_METRIC.labels(name, metric).set(value)
        for outcome, count in learner.state.counters.items():
            metrics.LABEL_EVENTS.labels(name, outcome).set(count)

    def hand_off(self, owned: Owned) -> bool:
        """Take the checkpoint now and have the write-behind thread write it, while learning
        goes on; False when it must be written in place (:meth:`write`): no write-behind, only
        positions moved or a fresh model's first version, the generation's first checkpoint
        here (it drops the older generations' rows), a rollback just applied, a broken model,
        or model operations to follow (challengers, recorded events: they read and write
        what an operator changes).

        Taken here, in the learner's thread and at one instant: the signed snapshot, metrics,
        resume state and offset, and the pending changes (:meth:`PgPending.hand_off`: still
        read as stored meanwhile). The thread's transaction does what :meth:`write` does with
        them: lock the control row (the same fence), store the changes, write the version. An
        operator's request found under that lock (a rollback, a pause to clear, a promotion)
        makes it write nothing: the changes are taken back and the next checkpoint is written
        in place, applying the request first (a rollback target's snapshot is never thinned
        away by a version written before it). Expiry waits for an in-place checkpoint too (the
        registry refresh asks for one when a row outlived the retention), so the counts stored
        with a version match its deletions."""
        owner = self.owner
        learner, pending = owned.learner, owned.pending
        d = learner.deployment
        if (owner.behind is None or learner.changes == 0 or learner.model.version == 0
                or owned.in_place or not pending.settled or owned.applied_rollback is not None
                or learner.model_events or learner.operations.challengers
                or learner.health() is not None):
            return False
        started = time.monotonic()
        blob = dump_snapshot(snapshot_payload(learner), owner.key)
        checkpoint = Checkpoint(d.name, 0, d.generation, learner.champion_model, blob,
                                learner.model.samples_learned, learner.metrics(),
                                learner.state.to_dict(), owned.offset, None)
        changes, epoch = pending.hand_off(), owned.epoch
        keep = owner.settings.model_versions_keep

        def write(conn: psycopg.Connection) -> int | None:
            with conn.transaction():
                control = versions.lock_control(conn, d.name, epoch, d.generation)
                if control.rollback_to is not None or control.paused_reason is not None \
                        or operations.promotion_pending(conn, d.name):
                    return None  # applied in place, before anything is written
                pending.write_changes(conn, changes)
                return versions.write(conn, checkpoint, keep)

        owner.inflight = InFlight(owned, owner.behind.submit(write), changes, learner.changes,
                                  owned.offset, learner.model.samples_learned, blob, started)
        self._taken(owned)
        return True

    def landed(self, job: InFlight, version: int, dropping: bool = False) -> None:
        """A checkpoint written behind committed: what :meth:`write` does after its commit."""
        self._committed(job.owned, version, job.samples, job.blob, job.offset, job.started,
                        dropping)

    def operate(self, owned: Owned, rolled_back: bool = False) -> list[ModelEvent]:
        """Inside the checkpoint's transaction, before the snapshot is taken: follow what
        operators asked for (detector, challengers), then promote -- the one ``rowcast model
        promote`` asked for, else an auto-promoting challenger with winning evidence -- so the
        version written next is the first one served with the new champion.

        After a rollback (``rolled_back``) the roles of the restored version win instead: its
        challengers, with their state, replace ``rowcast.challengers`` (otherwise a rollback
        across a promotion kept the roles written by the promotion and dropped the restored
        champion's rival, so there was no way back), none of them auto-promoting: the operator
        rolled back on purpose, and a winning window would promote it straight back."""
        learner, conn = owned.learner, self.owner.conn
        name = learner.deployment.name
        if rolled_back:
            for c in learner.operations.challengers.values():
                c.auto_promote, c.stored = False, True
            operations.restore_roles(conn, name, [
                (n, c.model.deployment.model, c.keep_predictions)
                for n, c in learner.operations.challengers.items()])
        for event in learner.model_events:  # retrain challengers it replaced itself
            if event.kind == "challenger_removed" and (event.challenger or "").startswith(
                    "retrain-"):
                conn.execute("DELETE FROM rowcast.challengers WHERE deployment = %s AND "
                             "name = %s", (name, event.challenger))
        self.configure(owned)
        promoted = []
        asked = operations.take_promotion(conn, name)
        if asked is not None and asked in learner.operations.challengers:
            promoted.append(learner.promote(asked, "manual"))
        elif asked is not None:
            log.warning("%s: no challenger %s to promote (removed since it was asked?)",
                        name, asked)
        else:
            best = learner.operations.ready_to_promote()
            if best is not None:
                promoted.append(learner.promote(best[0].name, "auto"))
        return promoted

    def configure(self, owned: Owned) -> None:
        """Bring the learner's detector and challengers in line with rowcast.model_operations
        and rowcast.challengers. Called when a deployment is restored, at every registry
        refresh and in each checkpoint, so a challenger added before the labels (or between
        checkpoints) learns from the next label the learner applies, not from the checkpoint
        after the next burst."""
        learner = owned.learner
        if owned.applied_rollback is not None:  # its checkpoint restores the version's roles
            return
        config = operations.read_config(self.owner.conn, learner.deployment.name)
        # retrain challengers the learner replaced itself leave rowcast.challengers only at
        # the next checkpoint: not started again from the stale row meanwhile
        gone = {e.challenger for e in learner.model_events if e.kind == "challenger_removed"
                and (e.challenger or "").startswith("retrain-")}
        wanted = {c.name: (c.model, c.auto_promote, c.shadow_predictions)
                  for c in config.challengers if c.name not in gone}
        # challengers the learner started itself (retrain after a drift) are kept; they are
        # stored in rowcast.challengers with the next checkpoint
        wanted |= {n: (c.model.deployment.model, c.auto_promote, c.keep_predictions)
                   for n, c in learner.operations.challengers.items()
                   if n.startswith("retrain-") and n not in wanted and not c.stored}
        learner.configure(config.detector, config.reaction, wanted)

    def record_operations(self, owned: Owned, version: int, promoted: list[ModelEvent]) -> None:
        """In the same transaction, once the version is known: the model events, the roles
        after a promotion, the new retrain challengers and the kept shadow predictions."""
        learner, conn = owned.learner, self.owner.conn
        name = learner.deployment.name
        for event in promoted:
            operations.swap_roles(conn, name, event.challenger or "",
                                  event.detail["previous"], event.detail["previous_model"])
        for cname, c in learner.operations.challengers.items():
            if cname.startswith("retrain-") and not c.stored:
                conn.execute("INSERT INTO rowcast.challengers (deployment, name, model, "
                             "auto_promote) VALUES (%s, %s, %s, true) ON CONFLICT DO NOTHING",
                             (name, cname, c.model.deployment.model))
            c.stored = True
            if c.shadow:
                operations.write_shadow(conn, name, [
                    (cname, key, scored.prediction, scored.score, learner.operations.labels)
                    for key, scored in c.shadow])
                c.shadow.clear()
        operations.record_events(conn, name, version, learner.model_events)
        for event in learner.model_events:
            if event.kind == "drift":
                metrics.DRIFT.labels(name, event.detail.get("detector", "?")).inc()
            elif event.kind == "promoted":
                metrics.PROMOTIONS.labels(name, event.detail.get("how", "?")).inc()
        learner.model_events.clear()
        for cname, c in learner.operations.challengers.items():
            for metric, value in c.progressive.values().items():
                metrics.CHALLENGER_METRIC.labels(name, cname, metric).set(value)
            recent = c.evidence()
            if recent.n:
                metrics.RECENT_LOSS.labels(name, cname, "challenger").set(recent.challenger_loss)
                metrics.RECENT_LOSS.labels(name, cname, "champion").set(recent.champion_loss)

    def advance(self, owned: Owned, dropping: bool = False) -> bool:
        """Only positions moved since the last version (watermarks, events still waiting for
        them): store the merge state and offset on that version instead of writing a new one.
        False when a full checkpoint is needed after all (a rollback or pause to apply)."""
        learner, d = owned.learner, owned.learner.deployment
        try:
            with self.owner.conn.transaction():
                control = versions.lock_control(self.owner.conn, d.name, owned.epoch,
                                                d.generation)
                if control.rollback_to is not None or control.paused_reason is not None \
                        or operations.promotion_pending(self.owner.conn, d.name):
                    return False
                versions.advance(self.owner.conn, d.name, learner.model.version,
                                 learner.state.to_dict(), owned.offset)
        except (Fenced, psycopg.Error):
            return False  # the full checkpoint handles (and logs) it
        owned.checkpointed_offset = owned.offset
        owned.since_checkpoint = 0
        owned.last_checkpoint = time.monotonic()
        if not dropping:  # never from a rebalance callback: kafka-python cannot block there
            self.commit_offset(owned)
        return True

    def roll_back(self, learner: DeploymentLearner, version: int) -> str:
        if version == versions.FRESH:  # the model as deployed, metrics and roles afresh
            fresh = DeploymentLearner.fresh(learner.deployment, learner.pending)
            learner.model.estimator, learner.model.samples_learned = fresh.model.estimator, 0
            learner.model.spec, learner.champion_model = fresh.model.spec, fresh.champion_model
            learner.progressive, learner.served = fresh.progressive, fresh.served
            learner.operations = fresh.operations
            log.info("%s rolled back to a fresh model (version 0)", learner.deployment.name)
            return f"rolled back to version {version}"
        ck = versions.get(self.owner.conn, learner.deployment.name, version)
        if ck.snapshot is None:
            raise SnapshotError(f"version {version} has no snapshot any more")
        payload = load_snapshot(ck.snapshot, self.owner.key)
        restore_payload(learner, payload)
        learner.model.samples_learned = ck.samples
        log.info("%s rolled back to version %d", learner.deployment.name, version)
        return f"rolled back to version {version}"

    def interval(self, owned: Owned, size: int) -> float:
        """Seconds between two publications of this deployment (:mod:`rowcast.models.cadence`)."""
        return publish_interval(owned.load_cost.estimate(size),
                                floor_s=self.owner.settings.learner_checkpoint_s)

    def publish_due(self, owned: Owned, force: bool = False) -> bool:
        """Publish the newest checkpointed version if the cadence allows it now (or ``force``:
        handing over, stopping); True when it was sent. A version not sent is only skipped by
        the scorers, which take the next one: every version stays in ``rowcast.model_versions``."""
        if owned.unpublished is None:
            return False
        version, samples, blob = owned.unpublished
        if owned.load_cost.needs_measuring(len(blob)):
            started = time.perf_counter()  # what each worker will spend on it: verify + unpickle
            load_snapshot(blob, self.owner.key)
            owned.load_cost.measured(len(blob), time.perf_counter() - started)
            interval = self.interval(owned, len(blob))
            if interval > self.owner.settings.learner_checkpoint_s:
                log.info("%s: a snapshot of %.1f MB loads in %.2f s: publishing at most every "
                         "%.1f s, so a worker spends <= %.0f %% of its CPU loading",
                         owned.learner.deployment.name, len(blob) / 1e6,
                         owned.load_cost.load_s, interval, 100 * WORKER_LOAD_SHARE)
        if not force and time.monotonic() - owned.last_publish < self.interval(owned, len(blob)):
            return False
        owned.unpublished = None
        owned.last_publish = time.monotonic()
        self.publish(owned.learner.deployment, version, samples, blob)
        return True

    def publish(self, d: Deployment, version: int, samples: int, blob: bytes) -> None:
        record = ModelRecord(d.name, d.generation, version, samples, blob)
        try:
            self.owner.producer.send(self.owner.settings.models_topic, key=record.kafka_key(),
                                     value=record.encode(self.owner.key), partition=0)
            self.owner.producer.flush(timeout=30)
        except KafkaError as exc:  # scorers keep the previous version until the next one
            log.error("could not publish version %d of %s: %s", version, d.name, exc)

    def commit_offset(self, owned: Owned) -> None:
        """Commit the checkpointed offset to the group, so lag shows what is not yet learned.
        A failure (rebalance, broker restarting) is retried from the loop: with no new labels
        coming there would otherwise be no later checkpoint to carry the commit."""
        owned.last_commit_try = time.monotonic()
        try:
            self.owner.consumer.commit({owned.tp: OffsetAndMetadata(owned.checkpointed_offset, "", -1)})
            owned.committed_offset = owned.checkpointed_offset
        except KafkaError as exc:  # lag display only; the checkpoint is the truth
            log.info("could not commit the learner offset of %s (will retry): %s",
                     owned.learner.deployment.name, exc)
