"""Route change events to the deployments on their table: score, and tell the learner.

Pure: it takes parsed events and returns prediction records, label events and rejections, so the
faust agent that calls it stays a thin loop and this logic is tested without a broker.

Scorers never learn (learning has one owner per model, see :mod:`rowcast.models.learning`); they serve
the snapshot the learner last published, installed with :meth:`ServingSet.install`. Only inserts
(``c``) and snapshot reads (``r``) are scored. Updates are not rescored, which keeps rowcast
loop-safe when predictions are written back into the source table; an update that sets the
target is a label for the row scored earlier.

One deployment never takes the others down. A deployment whose model cannot be built (a custom
``module:factory`` that does not import, a factory that raises) is kept in :attr:`ServingSet.failed`
and its rows are rejected as ``model_unavailable``; it is tried again whenever the registry
changes (a redeploy). A model that raises on one row rejects that row for that deployment
(``score_failed``), with nothing half-done left in the batch.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rowcast.core.envelope import UNAVAILABLE, ChangeEvent
from rowcast.core.errors import ConfigError
from rowcast.core.label_events import LabelEvent, Served
from rowcast.core.prediction import PredictionRecord, PredictionTombstone
from rowcast.models.deployment import Deployment
from rowcast.models.features import FeatureError, MissingColumn
from rowcast.models.scoring import OnlineModel, Score

SCORED_OPS = frozenset({"c", "r"})
LABEL_OPS = frozenset({"c", "u", "r"})
MODEL_UNAVAILABLE = "model_unavailable"  # dead-letter reason: the deployment's model cannot be built
SCORE_FAILED = "score_failed"  # dead-letter reason: the model (or routing) raised on this row

# a row's features (or why they could not be built) and its score (or what scoring raised)
Prescored = tuple[dict[str, Any] | Exception, Score | Exception]
# what the scorer serves for a deployment before and between snapshots: (version, estimator)
SnapshotLookup = Callable[[Deployment], tuple[int, Any] | None]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row a deployment could not score, with the reason (becomes a dead letter)."""

    deployment: str
    event: ChangeEvent
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Unbuildable:
    """A deployment whose model could not be built, and why (the error's one-line message)."""

    deployment: Deployment
    error: str


@dataclass
class BatchResult:
    predictions: list[PredictionRecord | PredictionTombstone] = field(default_factory=list)
    labels: list[LabelEvent] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class ServingSet:
    """The served models of every deployment, indexed by the tables they read."""

    def __init__(self, models: Iterable[OnlineModel],
                 snapshots: SnapshotLookup | None = None) -> None:
        self.snapshots = snapshots
        self._lock = threading.Lock()  # update (registry) and install (model feed) may race
        self.failed: dict[str, Unbuildable] = {}
        self._index(list(models))

    @classmethod
    def fresh(cls, deployments: Iterable[Deployment],
              snapshots: SnapshotLookup | None = None) -> ServingSet:
        serving = cls((), snapshots)
        serving.update(deployments)
        return serving

    def _index(self, models: list[OnlineModel], failed: dict[str, Unbuildable] | None = None,
               ) -> None:
        failed = self.failed if failed is None else failed
        unbuildable: dict[tuple[str, str], list[Unbuildable]] = defaultdict(list)
        for u in failed.values():
            unbuildable[(u.deployment.schema, u.deployment.table)].append(u)
        by_table: dict[tuple[str, str], list[OnlineModel]] = defaultdict(list)
        by_labels: dict[tuple[str, str], list[OnlineModel]] = defaultdict(list)
        for model in models:
            d = model.deployment
            by_table[(d.schema, d.table)].append(model)
            if d.labels is not None:
                by_labels[(d.labels.schema, d.labels.table)].append(model)
        # swapped whole: the scoring thread sees the old index or the new one, never half
        self.by_table, self.by_labels, self.unbuildable, self.failed = (
            dict(by_table), dict(by_labels), dict(unbuildable), dict(failed))

    def tables(self) -> list[tuple[str, str]]:
        """Every table whose change topic the scorer must read (scored and labels tables, and
        the tables of failed deployments, whose rows go to the dead-letter topic)."""
        return sorted(set(self.by_table) | set(self.by_labels) | set(self.unbuildable))

    def models(self) -> list[OnlineModel]:
        return [m for models in self.by_table.values() for m in models]

    def _build(self, d: Deployment) -> OnlineModel:
        model = OnlineModel.fresh(d)
        snapshot = self.snapshots(d) if self.snapshots is not None else None
        if snapshot is not None:
            model.version, model.estimator = snapshot
        return model

    def update(self, deployments: Iterable[Deployment]) -> set[tuple[str, str]]:
        """Apply the registry's current deployments; return tables not yet served.

        Unchanged deployments keep their model; changed ones (a new generation) and new ones
        get the learner's latest snapshot for that generation, or a fresh model (version 0);
        removed ones stop scoring. Tables in the result need a new topic subscription, which
        the caller arranges.
        """
        with self._lock:
            current = {m.deployment.name: m for m in self.models()}
            served = set(self.tables())
            models, failed = [], {}
            for d in deployments:
                kept = current.get(d.name)
                same = kept is not None and kept.deployment == d \
                    and kept.deployment.generation == d.generation
                if same:
                    models.append(kept)
                    continue
                try:
                    models.append(self._build(d))
                except Exception as exc:  # a user's module or factory: anything can happen
                    error = str(exc) if isinstance(exc, ConfigError) \
                        else f"{type(exc).__name__}: {exc}"
                    failed[d.name] = Unbuildable(d, error)
            self._index(models, failed)
            return set(self.tables()) - served

    def install(self, name: str, generation: str, version: int, estimator: Any) -> bool:
        """Serve ``estimator`` as ``version`` of deployment ``name`` (a hot swap); False when
        no deployment of that name and generation is served here."""
        with self._lock:
            models = self.models()
            for i, m in enumerate(models):
                if m.deployment.name == name and m.deployment.generation == generation:
                    models[i] = OnlineModel(m.deployment, m.spec, estimator, version)
                    self._index(models, self.failed)
                    return True
            return False

    def handle(self, events: Iterable[ChangeEvent], now_us: int | None = None) -> BatchResult:
        """Predictions, label events and rejections of ``events``, in their order.

        Each deployment scores the rows it gets at once (see :meth:`_score_batch`); what comes
        out, and in which order, is what scoring them one by one gave. ``now_us`` (the
        predictions' ``scored_at_us``) is read once per call.
        """
        events = events if isinstance(events, list) else list(events)
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        by_table = self.by_table  # one index for the whole batch, whatever install() swaps in
        scored = self._score_batch(events, by_table)
        result = BatchResult()
        score_one = self._score_one
        for event in events:
            if event.after is None:
                if event.op == "d" and event.before is not None:
                    self._deleted(event, result)
                continue
            table = (event.source.schema, event.source.table)
            for model in by_table.get(table, ()):
                if event.only_for is not None and event.only_for != model.deployment.name:
                    continue
                if event.op in SCORED_OPS:  # _guarded, inline: this runs for every scored row
                    marks = len(result.predictions), len(result.labels), len(result.rejected)
                    try:
                        score_one(model, event, result, now_us, scored.get(id(model)))
                    except Exception as exc:
                        _undo(result, marks, model, event, exc)
                elif event.op == "u":
                    _guarded(self._label_from_update, model, event, result)
            if event.op in SCORED_OPS:
                for u in self.unbuildable.get(table, ()):
                    if event.only_for is None or event.only_for == u.deployment.name:
                        result.rejected.append(Rejected(u.deployment.name, event,
                                                        MODEL_UNAVAILABLE, u.error))
            if event.op in LABEL_OPS:
                for model in self.by_labels.get(table, ()):
                    _guarded(self._label_from_table, model, event, result)
        return result

    @staticmethod
    def _score_batch(events: list[ChangeEvent], by_table: dict[tuple[str, str], list[OnlineModel]],
                     ) -> dict[int, dict[int, Prescored]]:
        """Features and scores of every row each model scores in this batch, computed per
        model at once (:meth:`OnlineModel.score_many`): ``{id(model): {id(event): (features
        or the error building them, score or the error scoring)}}``. :meth:`_score_one` then
        reads them, so what it decides is what it decided row by row."""
        rows: dict[int, tuple[OnlineModel, list[ChangeEvent]]] = {}
        for event in events:
            if event.after is None or event.op not in SCORED_OPS:
                continue
            for model in by_table.get((event.source.schema, event.source.table), ()):
                if event.only_for is None or event.only_for == model.deployment.name:
                    rows.setdefault(id(model), (model, []))[1].append(event)
        out: dict[int, dict[int, Prescored]] = {}
        for key, (model, scoring) in rows.items():
            built: list[tuple[ChangeEvent, dict[str, float | str] | Exception]] = []
            for event in scoring:
                try:
                    built.append((event, model.features(event.after,  # type: ignore[arg-type]
                                                         event.source.commit_us)))
                except Exception as exc:  # FeatureError: bad_feature; else score_failed
                    built.append((event, exc))
            xs = [x for _, x in built if not isinstance(x, Exception)]
            scores = iter(model.score_many(xs))
            out[key] = {id(event): (x, x if isinstance(x, Exception) else next(scores))
                        for event, x in built}
        return out

    def watermarks(self, table: tuple[str, str], stream: str, lsn: int,
                   now_us: int | None = None) -> list[LabelEvent]:
        """The source's watermark ``lsn`` on ``stream`` (a partition of ``table``'s change
        topic), as one ``watermark`` label event for each deployment reading that table, as
        its scored table or its labels table (see :mod:`rowcast.models.ordering`). The caller
        puts them after the label events of the batch that carried the watermark."""
        at_us = now_us if now_us is not None else time.time_ns() // 1000
        named: dict[str, Deployment] = {}
        for model in (*self.by_table.get(table, ()), *self.by_labels.get(table, ())):
            named.setdefault(model.deployment.name, model.deployment)
        return [LabelEvent("watermark", d.name, d.generation, {}, stream, (lsn, 0, 0), at_us)
                for d in named.values()]

    @staticmethod
    def _score_one(model: OnlineModel, event: ChangeEvent, result: BatchResult,
                   now_us: int | None, scored: dict[int, Prescored] | None = None) -> None:
        d = model.deployment
        row = event.after
        assert row is not None
        done = scored.get(id(event)) if scored is not None else None
        try:
            x = model.features(row, event.source.commit_us) if done is None else done[0]
            if isinstance(x, Exception):
                raise x
        except FeatureError as exc:  # bad_feature, or missing_column
            result.rejected.append(Rejected(d.name, event, exc.reason, str(exc)))
            return
        y = None
        # with a labels table, labels come from it alone (the row's own column is ignored); a
        # snapshot read's label is not learned (below), so it is not read either
        if model.spec.task != "anomaly" and d.labels is None and event.op != "r":
            try:
                y = model.label(row, event.source.commit_us)
            except FeatureError as exc:  # the row is still scored; its label is set aside
                result.rejected.append(Rejected(d.name, event, _label_reason(exc), str(exc)))
        scored_as = model.score(x) if done is None else done[1]
        if isinstance(scored_as, Exception):
            raise scored_as  # _guarded rejects the row for this deployment (score_failed)
        key = event.key if event.key is not None else {k: row.get(k) for k in d.key_columns}
        source = event.source
        result.predictions.append(PredictionRecord(  # deployment, model, model_version, schema,
            # table, key, prediction, score, source_lsn, source_commit_us, scored_at_us
            d.name, d.model, model.version, d.schema, d.table, key, scored_as.prediction,
            scored_as.score, source.lsn, source.commit_us,
            now_us if now_us is not None else time.time_ns() // 1000))
        if event.op == "r":
            # a snapshot read (deploy, backfill, reconcile --repair) may re-emit a row that was
            # learned already: it is scored, but only a later label teaches the model
            if model.spec.task == "anomaly":
                return
            y = None
        # an anomaly model learns every row; others learn what carries a label, now or later
        kind = "labelled" if y is not None or model.spec.task == "anomaly" else "scored"
        result.labels.append(LabelEvent(
            kind, d.name, d.generation, key, event.stream_id, event.order, source.commit_us,
            x, y, _served(model.version, scored_as), event.old_key))

    def _deleted(self, event: ChangeEvent, result: BatchResult) -> None:
        """A deleted row keeps nothing: its prediction goes (a tombstone for its key, which the
        sink turns into a DELETE) and the learner drops features still waiting for its label."""
        table = (event.source.schema, event.source.table)
        before = event.before
        assert before is not None
        for model in self.by_table.get(table, ()):
            d = model.deployment
            key = event.key if event.key is not None else {k: before.get(k) for k in d.key_columns}
            result.predictions.append(PredictionTombstone(d.name, key))
            result.labels.append(LabelEvent("deleted", d.name, d.generation, key, event.stream_id,
                                            event.order, event.source.commit_us))

    @staticmethod
    def _label_from_update(model: OnlineModel, event: ChangeEvent, result: BatchResult) -> None:
        d = model.deployment
        row = event.after
        assert row is not None
        value = row.get(d.target)
        if model.spec.task == "anomaly" or d.labels is not None:
            return
        if value is None:
            if d.target not in row and d.rows_have_columns_at(event.source.commit_us):
                exc = MissingColumn(d.target)
                result.rejected.append(Rejected(d.name, event, exc.reason, str(exc)))
            return
        if value == UNAVAILABLE:
            return
        if event.before is not None and event.before.get(d.target) == value:
            return  # the label did not change (REPLICA IDENTITY FULL tells us)
        # keyed as the row was scored: by the primary key the source read with it (after a
        # RENAME COLUMN of a key column, the deployment's key_columns name a column gone)
        key = event.key if event.key is not None else {k: row.get(k) for k in d.key_columns}
        _append_label(model, event, value, key, result)

    @staticmethod
    def _label_from_table(model: OnlineModel, event: ChangeEvent, result: BatchResult) -> None:
        d = model.deployment
        assert d.labels is not None and event.after is not None
        row = event.after
        value, ref = row.get(d.labels.column), row.get(d.labels.key)
        if value is None or ref is None or value == UNAVAILABLE:
            absent = [c for c in (d.labels.key, d.labels.column) if c not in row]
            if absent and d.rows_have_columns_at(event.source.commit_us):
                exc = MissingColumn(absent[0])
                result.rejected.append(Rejected(d.name, event, exc.reason, str(exc)))
            return
        if event.op == "u" and event.before is not None \
                and event.before.get(d.labels.column) == value:
            return
        _append_label(model, event, value, {d.key_columns[0]: ref}, result)


def _guarded(step: Callable[..., None], model: OnlineModel, event: ChangeEvent,
             result: BatchResult, *args: Any) -> None:
    """Run one deployment's step on one event; if it raises, undo what it added and reject
    the event for that deployment alone, so a model failing on a row costs only that row."""
    marks = len(result.predictions), len(result.labels), len(result.rejected)
    try:
        step(model, event, result, *args)
    except Exception as exc:
        _undo(result, marks, model, event, exc)


def _undo(result: BatchResult, marks: tuple[int, int, int], model: OnlineModel,
          event: ChangeEvent, exc: Exception) -> None:
    """What a failed step added goes; the event is rejected for that deployment alone."""
    del result.predictions[marks[0]:], result.labels[marks[1]:], result.rejected[marks[2]:]
    result.rejected.append(Rejected(model.deployment.name, event, SCORE_FAILED,
                                    f"{type(exc).__name__}: {exc}"))


def _append_label(model: OnlineModel, event: ChangeEvent, value: Any, key: dict[str, Any],
                  result: BatchResult) -> None:
    d = model.deployment
    try:
        y = model.label_value(value)
    except FeatureError as exc:
        result.rejected.append(Rejected(d.name, event, _label_reason(exc), str(exc)))
        return
    result.labels.append(LabelEvent("label", d.name, d.generation, key, event.stream_id,
                                    event.order, event.source.commit_us, y=y))


def _served(version: int, scored: Score) -> Served:
    proba = tuple(scored.proba.items()) if scored.proba else None
    return Served(version, scored.prediction, proba)


def _label_reason(exc: FeatureError) -> str:
    """A label's dead-letter reason: ``missing_column`` when the row has no target column,
    else ``bad_label`` (the value cannot be the task's label)."""
    return exc.reason if isinstance(exc, MissingColumn) else "bad_label"
