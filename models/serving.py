"""Route change events to the deployments on their table: score, then learn when labelled.

Pure: it takes parsed events and returns prediction records and dead letters, so the faust agent
that calls it stays a thin loop and this logic is tested without a broker.

Only inserts (``c``) and snapshot reads (``r``) are scored. Updates and deletes are not rescored:
that keeps rowcast loop-safe when predictions are written back into the source table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from connectors.envelope import ChangeEvent
from models.deployment import Deployment
from models.features import FeatureError
from models.prediction import PredictionRecord
from models.scoring import OnlineModel

SCORED_OPS = frozenset({"c", "r"})


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row a deployment could not score, with the reason (becomes a dead letter)."""

    deployment: str
    event: ChangeEvent
    reason: str
    message: str


@dataclass
class BatchResult:
    predictions: list[PredictionRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class ServingSet:
    """The online models of every deployment, indexed by the table they watch."""

    def __init__(self, models: Iterable[OnlineModel]) -> None:
        self.by_table: dict[tuple[str, str], list[OnlineModel]] = defaultdict(list)
        for model in models:
            d = model.deployment
            self.by_table[(d.schema, d.table)].append(model)

    @classmethod
    def fresh(cls, deployments: Iterable[Deployment]) -> ServingSet:
        return cls(OnlineModel.fresh(d) for d in deployments)

    def tables(self) -> list[tuple[str, str]]:
        return sorted(t for t, models in self.by_table.items() if models)

    def models(self) -> list[OnlineModel]:
        return [m for models in self.by_table.values() for m in models]

    def update(self, deployments: Iterable[Deployment]) -> set[tuple[str, str]]:
        """Apply the registry's current deployments in place; return tables not yet served.

        Unchanged deployments keep their learned model; changed ones (a new version) and new
        ones start fresh; removed ones stop scoring. Tables in the result need a new topic
        subscription, which the caller arranges.
        """
        current = {m.deployment.name: m for m in self.models()}
        served = set(self.tables())
        rebuilt: dict[tuple[str, str], list[OnlineModel]] = defaultdict(list)
        for d in deployments:
            kept = current.get(d.name)
            model = kept if kept is not None and kept.deployment == d \
                and kept.deployment.version == d.version else OnlineModel.fresh(d)
            rebuilt[(d.schema, d.table)].append(model)
        self.by_table = rebuilt
        return set(rebuilt) - served

    def handle(self, events: Iterable[ChangeEvent], now_us: int | None = None) -> BatchResult:
        result = BatchResult()
        for event in events:
            if event.op not in SCORED_OPS or event.after is None:
                continue
            for model in self.by_table.get((event.source.schema, event.source.table), ()):
                if event.only_for is None or event.only_for == model.deployment.name:
                    self._score_one(model, event, result, now_us)
        return result

    @staticmethod
    def _score_one(model: OnlineModel, event: ChangeEvent, result: BatchResult,
                   now_us: int | None) -> None:
        d = model.deployment
        row = event.after
        assert row is not None
        try:
            x = model.features(row)
            y = model.label(row)
        except FeatureError as exc:
            result.rejected.append(Rejected(d.name, event, "bad_feature", str(exc)))
            return
        scored = model.score(x)
        key = event.key if event.key is not None else {k: row.get(k) for k in d.key_columns}
        result.predictions.append(PredictionRecord(
            deployment=d.name, model=d.model, model_version=model.version, schema=d.schema,
            table=d.table, key=key, prediction=scored.prediction, score=scored.score,
            source_lsn=event.source.lsn, source_commit_us=event.source.commit_us,
            scored_at_us=now_us if now_us is not None else time.time_ns() // 1000,
        ))
        if y is not None:
            model.learn(x, y)
