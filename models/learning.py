"""The learner's core: label events in, a model that learned each label exactly once.

Pure (no Kafka, no Postgres): :class:`DeploymentLearner` applies label events in the table's
commit order -- the labels topic interleaves the change topic's partitions, so events pass
through :class:`rowcast.models.ordering.CommitOrderMerge`, gated by the partitions' watermarks --
and everything it must remember to resume exactly is in
:class:`LearnerState` plus the pending features (:class:`PendingStore`), which the learner
process checkpoints with the model in one Postgres transaction (see :mod:`rowcast.connectors.versions`).

Each label is learned once: a row -- (deployment, generation, primary key) -- teaches the model
at most once. The store remembers every learned key (with its label) for
``ROWCAST_LABEL_RETENTION_S``, persisted with the checkpoint, so the rule holds across restarts
and whatever re-emits a row: a crash replay upstream, ``rowcast backfill --all`` or
``rowcast reconcile --repair`` (the re-emitted row is scored, its features are not kept), a
primary-key change (the new key's event names the old key: learned under one, learned under
both). A later *different* label for a learned row is a **correction**: counted
(``corrections``) and not learned, since an online model cannot unlearn the first one and
progressive validation would count the row twice. A reused primary key within the retention
(delete, then insert a new row with the same key) is therefore not learned again.

Replays are recognised by that rule, not by their position, so a dead letter replayed with
``rowcast dlq replay`` after a fix (it keeps its old position) is learned if its row never was.
Per stream (a source partition) the highest position seen is still recorded (``high_water``),
with the system identifier of the cluster those positions belong to: restored into another
cluster, the learner starts a new position epoch (``LearnerState.new_epoch``), loudly.

A label can come before its row's features (a labels-table row committed with, or before, the
scored row reaches the learner first): it is **held** (counted ``unmatched`` on arrival), kept
like pending features for the retention, and learned when the features come, at their place
in the stream (``late_joined``); one that never joins expires as ``unjoined`` and
``rowcast reconcile`` reports the ones still waiting.

Progressive validation: before learning a label the learner scores the row with its current
model, so the running metric is the one ``river.evaluate.progressive_val_score`` reports on the
same rows in the same order. The score the row received from its scorer (``served``) is
tracked beside it: the difference is what snapshot staleness costs.

>>> from rowcast.models.deployment import Deployment, Feature
>>> from rowcast.core.label_events import LabelEvent
>>> d = Deployment("spend", "public", "c", "y", (Feature("x", "number"),), "linear_regression", ("id",))
>>> learner = DeploymentLearner.fresh(d, MemoryPending())
>>> e = LabelEvent("labelled", "spend", d.generation, {"id": 1}, "t:0", (5, 5, 1), 0, {"x": 1.0}, 2.0)
>>> learner.apply([e, e])  # the replayed copy is not learned again
1
>>> learner.state.counters["duplicates"], learner.model.samples_learned
(1, 1)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from rowcast.core.keys import key_id
from rowcast.core.label_events import LabelEvent, Served
from rowcast.models import health
from rowcast.models.deployment import Deployment
from rowcast.models.operations import Challenger, ModelEvent, ModelOperations, row_loss
from rowcast.models.ordering import CommitOrderMerge
from rowcast.models.progressive import OnlineMetrics
from rowcast.models.scoring import OnlineModel, has_categories

_NEW_ROW_KINDS = frozenset({"labelled", "scored"})  # events an inserted row causes
COUNTERS = ("learned", "joined", "pending_added", "unmatched", "duplicates", "stale", "expired",
            "corrections", "late_joined", "unjoined", "non_finite", "forced_order", "forgotten")


class PendingStore(Protocol):
    """What the learner keeps between events, by the row's key (JSON bytes), for one generation:
    features of scored rows waiting for a label, labels held until their row's features come,
    and the rows learned already (with the label they were learned with)."""

    def prefetch(self, keys: Iterable[bytes]) -> None: ...
    def put(self, key: bytes, entry: dict[str, Any]) -> None: ...
    def pop(self, key: bytes) -> dict[str, Any] | None: ...
    def hold(self, key: bytes, entry: dict[str, Any]) -> None: ...
    def take_held(self, key: bytes) -> dict[str, Any] | None: ...
    def learned(self, key: bytes) -> dict[str, Any] | None: ...
    def mark_learned(self, key: bytes, entry: dict[str, Any]) -> None: ...
    def assume_absent(self, keys: Iterable[bytes], kinds: Iterable[str]) -> None: ...


class MemoryPending:
    """A pending store in dicts: for tests and doctests (the learner uses Postgres)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, dict[str, Any]] = {}
        self.held: dict[bytes, dict[str, Any]] = {}
        self.done: dict[bytes, dict[str, Any]] = {}

    def prefetch(self, keys: Iterable[bytes]) -> None:
        pass

    def put(self, key: bytes, entry: dict[str, Any]) -> None:
        self.entries[key] = entry

    def pop(self, key: bytes) -> dict[str, Any] | None:
        return self.entries.pop(key, None)

    def hold(self, key: bytes, entry: dict[str, Any]) -> None:
        self.held[key] = entry

    def take_held(self, key: bytes) -> dict[str, Any] | None:
        return self.held.pop(key, None)

    def learned(self, key: bytes) -> dict[str, Any] | None:
        return self.done.get(key)

    def mark_learned(self, key: bytes, entry: dict[str, Any]) -> None:
        self.done[key] = entry

    def assume_absent(self, keys: Iterable[bytes], kinds: Iterable[str]) -> None:
        pass  # dicts answer without a round trip


@dataclass
class LearnerState:
    """What a checkpoint must hold besides the model and metrics to resume exactly."""

    high_water: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    # the cluster whose WAL ``high_water`` positions are in (None: not known yet)
    system_identifier: str | None = None
    # label events waiting for every partition's watermark (learning in commit order)
    merge: CommitOrderMerge = field(default_factory=CommitOrderMerge)

    def new_epoch(self, system_identifier: str | None) -> None:
        """Positions of another database history are not comparable with this one's: forget
        them (see :mod:`rowcast.connectors.position_history`)."""
        self.high_water.clear()
        self.merge.watermarks.clear()
        self.system_identifier = system_identifier

    def to_dict(self) -> dict[str, Any]:
        self.counters["forced_order"] = self.merge.forced
        return {"high_water": {k: list(v) for k, v in self.high_water.items()},
                "counters": dict(self.counters), "system_identifier": self.system_identifier,
                "merge": self.merge.to_dict()}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> LearnerState:
        doc = orjson.loads(data) if isinstance(data, bytes | str) else data
        counters = dict.fromkeys(COUNTERS, 0) | {k: int(v) for k, v in doc["counters"].items()}
        return cls({k: tuple(v) for k, v in doc["high_water"].items()}, counters,  # type: ignore[misc]
                   doc.get("system_identifier"), CommitOrderMerge.from_dict(doc.get("merge")))


class DeploymentLearner:
    """One deployment's model, its progressive metrics and its resume state."""

    def __init__(self, model: OnlineModel, progressive: OnlineMetrics, served: OnlineMetrics,
                 state: LearnerState, pending: PendingStore) -> None:
        self.model = model
        self.progressive = progressive
        self.served = served
        self.state = state
        self.pending = pending
        self.last_x: Mapping[str, float | str] | None = None  # what health() scores
        self.guarded = False
        self.refused: list[tuple[LabelEvent, str]] = []  # by a guarded apply, with the reason
        self._current: LabelEvent | None = None
        self.broken: str | None = None  # learning raised (overflow): why it must not be kept
        self.changes = 0  # events applied since the last checkpoint (0: only positions moved)
        # label committed -> learned since the last checkpoint, in µs: how many labels took each
        # (a batch's labels share few commit times: one count each, not a float per label)
        self.delays_us: Counter[int] = Counter()
        # drift detector and challengers in shadow (rowcast.models.operations), fed every row
        # this model learns, in the same order; what happened since the last checkpoint
        self.operations = ModelOperations(model.spec.task)
        self.model_events: list[ModelEvent] = []
        self._now_us = 0  # when the rows being applied are learned (their markers' time)

    @classmethod
    def fresh(cls, deployment: Deployment, pending: PendingStore) -> DeploymentLearner:
        model = OnlineModel.fresh(deployment)
        task = model.spec.task
        return cls(model, OnlineMetrics(task), OnlineMetrics(task), LearnerState(), pending)

    @property
    def deployment(self) -> Deployment:
        return self.model.deployment

    def metrics(self) -> dict[str, Any]:
        """What a checkpoint stores and dashboards show."""
        out: dict[str, Any] = {"progressive": self.progressive.values(),
                               "served": self.served.values(), "labels": self.progressive.n}
        ops = self.operations
        if ops.challengers:
            out["challengers"] = ops.compare()
        out["drift"] = {"detector": ops.detector_name, "reaction": ops.reaction,
                        "detections": ops.drifts}
        if self.delays_us:  # label committed -> learned, over the labels since the last one
            out["learning_delay_ms"] = {
                "p50": round(_percentile(self.delays_us, 0.5) / 1000, 1),
                "p99": round(_percentile(self.delays_us, 0.99) / 1000, 1)}
        return out

    def health(self) -> str | None:
        """Why this model must not be checkpointed or published (non-finite state, answer or
        metric), or None when it may be."""
        return self.broken or health.problem(self.model, self.last_x, self.progressive, self.served)

    def apply(self, events: Sequence[LabelEvent], guarded: bool = False,
              now: float | None = None) -> int:
        """Take events as they arrived, learn those the commit-order merge releases
        (:mod:`rowcast.models.ordering`: watermark events gate, they are never learned);
        returns how many samples were learned. ``apply([])`` releases what waited too long.

        ``guarded`` (the replay after a model broke and was rolled back): each row is learned
        on a copy-able model and checked; a row that makes the model non-finite is undone,
        counted ``non_finite`` and listed in :attr:`refused` (the learner dead-letters it).
        The row stays marked learned, so a replay of it is a duplicate, not a second break."""
        self.guarded = guarded
        try:
            return self._apply(self._in_commit_order(events, now))
        finally:
            self.guarded = False

    def _in_commit_order(self, events: Sequence[LabelEvent],
                         now: float | None) -> list[LabelEvent]:
        merge = self.state.merge
        now = time.monotonic() if now is None else now
        labels = [e for e in events if e.kind != "watermark"]
        if len(labels) != len(events):
            for e in events:
                if e.kind == "watermark":
                    merge.watermark(e.stream, e.order[0])
        merge.add_many(labels, now)
        released = merge.release(now)
        self.changes += len(released)
        now_us = time.time_ns() // 1000
        delays = self.delays_us
        for at_us, count in Counter(e.at_us for e in released
                                    if e.at_us and e.kind != "scored").items():
            delays[max(now_us - at_us, 0)] += count
        return released

    def _apply(self, events: Sequence[LabelEvent]) -> int:
        generation, high_water = self.deployment.generation, self.state.high_water
        counters, pending = self.state.counters, self.pending
        fresh: list[tuple[LabelEvent, bytes]] = []
        keys: list[bytes] = []
        new_labelled: list[bytes] = []
        new_scored: list[bytes] = []
        for e in events:
            # drop other generations' events; record each stream's highest position (replays
            # are recognised by the row, in _known, so a replayed dead letter is learned)
            if e.generation != generation:
                counters["stale"] += 1
                continue
            seen = high_water.get(e.stream)
            key = key_id(e.key)
            if seen is None or e.order > seen:
                high_water[e.stream] = e.order
                if e.was is None and e.kind in _NEW_ROW_KINDS and not e.stream.endswith(":r"):
                    # a row inserted after everything this stream delivered before: nothing
                    # can be kept for its key but a label that came first (held), so the
                    # store is not asked (at 20,000 rows/s, three index probes per row were
                    # most of the learner's time)
                    (new_labelled if e.kind == "labelled" else new_scored).append(key)
            fresh.append((e, key))
            keys.append(key)
            if e.was is not None:
                keys.append(key_id(e.was))
        pending.assume_absent(new_labelled, ("features", "held", "learned"))
        pending.assume_absent(new_scored, ("features", "learned"))
        pending.prefetch(keys)
        # a learned row's marker counts its retention from now, not from its label's commit:
        # a learner catching up on labels older than the retention must still refuse them twice
        self._now_us = time.time_ns() // 1000
        learned = 0
        for e, key in fresh:
            self._current = e  # what a guarded apply refuses, if learning it breaks the model
            kind = e.kind
            if kind == "deleted":  # the row is gone: its features (or early label) too
                if pending.pop(key) is not None or pending.take_held(key) is not None:
                    counters["forgotten"] += 1
                continue
            if self._known(e, key):
                continue
            if kind == "labelled":
                pending.pop(key)  # features of an earlier, unlabelled row with this key
                pending.take_held(key)
                learned += self._learn(key, e.x or {}, e.y, e.served)
            elif kind == "scored":
                held = pending.take_held(key)
                if held is None:
                    pending.put(key, _entry(e))
                    counters["pending_added"] += 1
                    continue
                # its label came first: learn now, at the place of the features in the stream
                counters["late_joined"] += 1
                learned += self._learn(key, e.x or {}, held["y"], e.served)
            else:
                entry = pending.pop(key)
                if entry is None:  # the features have not come (yet): hold the label
                    pending.hold(key, {"y": e.y, "at_us": e.at_us})
                    counters["unmatched"] += 1
                    continue
                counters["joined"] += 1
                learned += self._learn(key, entry["x"], e.y, _served(entry.get("served")))
        return learned

    def _known(self, e: LabelEvent, key: bytes) -> bool:
        """True when the event's row was learned already (the event is then only counted)."""
        done = self.pending.learned(key)
        if done is None and e.was is not None:
            # a primary-key change: the row under its new key is the row learned under the old
            done = self.pending.learned(key_id(e.was))
            if done is not None:
                self.pending.mark_learned(key, {"y": done["y"], "at_us": self._now_us})
        if done is None:
            return False
        if e.kind == "scored" or e.y is None or e.y == done["y"]:
            # a replay, or a row re-emitted by backfill / reconcile --repair: its features are
            # not kept, so a later UPDATE of the row cannot teach it a second time
            self.state.counters["duplicates"] += 1
        else:
            self.state.counters["corrections"] += 1
        return True

    def _learn(self, key: bytes, x: dict[str, float | str], y: Any, served: Served | None
               ) -> int:
        self.pending.mark_learned(key, {"y": y, "at_us": self._now_us})
        before = copy.deepcopy((self.model.estimator, self.progressive, self.served,
                                self.last_x, self.model.samples_learned, self.operations,
                                len(self.model_events))) if self.guarded else None
        try:
            self._learn_row(x, y, served)
        except ArithmeticError as exc:  # e.g. a metric squaring 1e300: the state is half-updated
            reason = f"learning a row raised {type(exc).__name__}: {exc}"
        else:
            reason = self.health() if before is not None else None
        if reason is None:
            self.state.counters["learned"] += 1
            return 1
        if before is None:  # not guarded: this model must never be checkpointed
            self.broken = self.broken or reason
            return 0
        (self.model.estimator, self.progressive, self.served, self.last_x,
         self.model.samples_learned, self.operations, kept) = before
        del self.model_events[kept:]
        self.state.counters["non_finite"] += 1
        assert self._current is not None
        self.refused.append((self._current, reason))
        return 0

    def _learn_row(self, x: dict[str, float | str], y: Any, served: Served | None) -> None:
        task = self.model.spec.task
        if task != "anomaly":
            scored = self.model.score_then_learn(x, y)  # scored before it learns the row
            self.progressive.update(y, scored)  # test, then train
            if served is not None:
                self.served.observe(y, served.prediction, served.proba_dict())
            ops = self.operations
            if ops.detector is not None or ops.challengers:
                self._operate(x, y, row_loss(task, y, scored))
        else:
            self.model.learn(x, y)
        self.last_x = x

    def _operate(self, x: dict[str, float | str], y: Any, loss: float | None) -> None:
        """The same row, in the same place of the stream, for the drift detector and for each
        challenger (scored on it before learning it, as the champion was)."""
        ops = self.operations
        event = ops.observe(loss)
        if event is not None:
            self.model_events.append(event)
            if ops.reaction == "retrain":
                self._retrain(ops)
        if not ops.challengers:
            return
        key = self._current.key_bytes() if self._current is not None else None
        for challenger in ops.challengers.values():
            challenger.observe(dict(x), y, loss, key)

    def _retrain(self, ops: ModelOperations) -> None:
        """A fresh model of the champion's kind learns from the drift point on, in shadow, and
        is promoted once it is better on the recent window. One at a time: a younger one than
        ``min_labels`` rows is already learning from (near) this drift point and stays;
        an older one (a new drift since) is replaced."""
        current = [n for n in ops.challengers if n.startswith("retrain-")]
        if any(ops.challengers[n].progressive.n < ops.min_labels for n in current):
            return
        for name in current:
            event = ops.remove(name)
            if event is not None:
                self.model_events.append(event)
        fresh = OnlineModel(dataclasses.replace(self.deployment, model=self.champion_model),
                            self.model.spec,
                            self.model.spec.build(has_categories(self.deployment)))
        self.model_events.append(ops.add(Challenger(f"retrain-{ops.labels}", fresh,
                                                    auto_promote=True)))

    # -- challengers and promotion (called by the learner at a checkpoint) ------------------
    def configure(self, detector: str, reaction: str,
                  challengers: Mapping[str, tuple[str, bool, bool]]) -> None:
        """Bring the detector and the challengers in line with what operators asked for
        (``rowcast.model_operations``, ``rowcast.challengers``: name -> (model, auto_promote,
        shadow_predictions)). A new challenger starts fresh, from the next label; one no
        longer asked for goes."""
        ops = self.operations
        ops.configure(detector, reaction)
        for name in [n for n in ops.challengers if n not in challengers]:
            event = ops.remove(name)
            if event is not None:
                self.model_events.append(event)
        for name, (model, auto, shadow) in challengers.items():
            current = ops.challengers.get(name)
            if current is not None and current.model.deployment.model == model:
                current.auto_promote, current.keep_predictions = auto, shadow
                continue
            d = dataclasses.replace(self.deployment, model=model)
            self.model_events.append(ops.add(Challenger(name, OnlineModel.fresh(d), auto,
                                                        keep_predictions=shadow)))

    def promote(self, name: str, how: str) -> ModelEvent:
        """``name`` becomes the champion: its estimator is served from the next version, its
        metrics become the deployment's; the champion becomes the challenger
        ``champion-v<version>`` (promoting it back rolls the switch back). The evidence of the
        recent window is recorded with the event."""
        ops = self.operations
        challenger = ops.challengers.pop(name)
        evidence = challenger.evidence(ops.min_labels, ops.margin).to_dict()
        old_name = f"champion-v{self.model.version}"
        old_model = OnlineModel(dataclasses.replace(self.deployment, model=self.champion_model),
                                self.model.spec, self.model.estimator, self.model.version,
                                self.model.samples_learned)
        old = Challenger(old_name, old_model)
        old.progressive = self.progressive
        old.pairs.extend((b, a) for a, b in challenger.pairs)
        ops.challengers[old_name] = old
        self.model.spec = challenger.model.spec
        self.model.estimator = challenger.model.estimator
        self.progressive = challenger.progressive
        self.champion_model = challenger.model.deployment.model
        self.changes += 1  # a new version, even without a new label
        event = ModelEvent("promoted", ops.labels, name,
                           {"how": how, "model": self.champion_model, "previous": old_name,
                            "previous_model": old_model.deployment.model, "evidence": evidence})
        self.model_events.append(event)
        return event

    @property
    def champion_model(self) -> str:
        """The catalog model serving now (the deployment's, until a challenger is promoted)."""
        return getattr(self, "_champion_model", None) or self.deployment.model

    @champion_model.setter
    def champion_model(self, model: str) -> None:
        self._champion_model = model


def _percentile(counts: Mapping[int, int], q: float) -> int:
    """The value at rank ``int(n * q)`` (0-based, capped at n - 1) of the multiset ``counts``
    (value -> how many times): what indexing the sorted list of every value gives.

    >>> _percentile({5: 1, 1: 2, 9: 1}, 0.5), _percentile({5: 1, 1: 2, 9: 1}, 0.99)
    (5, 9)
    """
    n = sum(counts.values())
    rank = min(n - 1, int(n * q))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen > rank:
            return value
    raise ValueError("no values")


def _entry(e: LabelEvent) -> dict[str, Any]:
    return {"x": e.x or {}, "at_us": e.at_us,
            "served": None if e.served is None else e.served.to_doc()}


def _served(doc: dict | list | None) -> Served | None:
    return Served.from_doc(doc)
