"""The learner's core: label events in, a model that learned each label exactly once.

Pure (no Kafka, no Postgres): :class:`DeploymentLearner` applies label events in the order of the
deployment's labels topic, and everything it must remember to resume exactly is in
:class:`LearnerState` plus the pending features (:class:`PendingStore`), which the learner
process checkpoints with the model in one Postgres transaction (see :mod:`rowcast.connectors.versions`).

Exactly once, from at-least-once inputs: the CDC source and the scorers may replay after a
crash. Each event carries the position of the change it came from; per stream (a source
partition) positions only grow, so an event at or below the high-water mark of its stream was
learned already and is skipped.

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from rowcast.core.label_events import LabelEvent, Served
from rowcast.models.deployment import Deployment
from rowcast.models.progressive import OnlineMetrics
from rowcast.models.scoring import OnlineModel, Score

COUNTERS = ("learned", "joined", "pending_added", "unmatched", "duplicates", "stale", "expired")


class PendingStore(Protocol):
    """Features of scored rows still waiting for their label, by the row's key (JSON bytes)."""

    def prefetch(self, keys: Iterable[bytes]) -> None: ...
    def put(self, key: bytes, entry: dict[str, Any]) -> None: ...
    def pop(self, key: bytes) -> dict[str, Any] | None: ...


class MemoryPending:
    """A pending store in a dict: for tests and doctests (the learner uses Postgres)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, dict[str, Any]] = {}

    def prefetch(self, keys: Iterable[bytes]) -> None:
        pass

    def put(self, key: bytes, entry: dict[str, Any]) -> None:
        self.entries[key] = entry

    def pop(self, key: bytes) -> dict[str, Any] | None:
        return self.entries.pop(key, None)


@dataclass
class LearnerState:
    """What a checkpoint must hold besides the model and metrics to resume exactly."""

    high_water: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))

    def to_dict(self) -> dict[str, Any]:
        return {"high_water": {k: list(v) for k, v in self.high_water.items()},
                "counters": dict(self.counters)}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> LearnerState:
        doc = orjson.loads(data) if isinstance(data, bytes | str) else data
        counters = dict.fromkeys(COUNTERS, 0) | {k: int(v) for k, v in doc["counters"].items()}
        return cls({k: tuple(v) for k, v in doc["high_water"].items()}, counters)  # type: ignore[misc]


class DeploymentLearner:
    """One deployment's model, its progressive metrics and its resume state."""

    def __init__(self, model: OnlineModel, progressive: OnlineMetrics, served: OnlineMetrics,
                 state: LearnerState, pending: PendingStore) -> None:
        self.model = model
        self.progressive = progressive
        self.served = served
        self.state = state
        self.pending = pending

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
        return {"progressive": self.progressive.values(), "served": self.served.values(),
                "labels": self.progressive.n}

    def apply(self, events: Sequence[LabelEvent]) -> int:
        """Apply events in order; returns how many samples were learned."""
        fresh = [e for e in events if self._admit(e)]
        self.pending.prefetch(e.key_bytes() for e in fresh if e.kind == "label")
        learned = 0
        for e in fresh:
            if e.kind == "labelled":
                learned += self._learn(e.x or {}, e.y, e.served)
            elif e.kind == "scored":
                self.pending.put(e.key_bytes(), _entry(e))
                self.state.counters["pending_added"] += 1
            else:
                entry = self.pending.pop(e.key_bytes())
                if entry is None:  # never scored here, learned already, or expired
                    self.state.counters["unmatched"] += 1
                    continue
                self.state.counters["joined"] += 1
                learned += self._learn(entry["x"], e.y, _served(entry.get("served")))
        return learned

    def _admit(self, e: LabelEvent) -> bool:
        """Drop other generations' events and replays (at or below the stream's high water)."""
        if e.generation != self.deployment.generation:
            self.state.counters["stale"] += 1
            return False
        seen = self.state.high_water.get(e.stream)
        if seen is not None and e.order <= seen:
            self.state.counters["duplicates"] += 1
            return False
        self.state.high_water[e.stream] = e.order
        return True

    def _learn(self, x: dict[str, float | str], y: Any, served: Served | None) -> int:
        if self.model.spec.task != "anomaly":
            self.progressive.update(y, self.model.score(x))  # test, then train
            if served is not None:
                self.served.update(y, Score(served.prediction, None, served.proba_dict()))
        self.model.learn(x, y)
        self.state.counters["learned"] += 1
        return 1


def _entry(e: LabelEvent) -> dict[str, Any]:
    s = e.served
    return {"x": e.x or {}, "at_us": e.at_us,
            "served": None if s is None else [s.version, s.prediction,
                                              None if s.proba is None else [list(p) for p in s.proba]]}


def _served(doc: list | None) -> Served | None:
    if doc is None:
        return None
    version, prediction, proba = doc
    return Served(int(version), prediction,
                  None if proba is None else tuple((k, float(p)) for k, p in proba))
