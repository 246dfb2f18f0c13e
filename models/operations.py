"""Running a model for months: drift detection, challengers in shadow, promotion on evidence.

Pure (no I/O). The learner feeds every labelled row it learns, in commit order, to the
deployment's :class:`ModelOperations` with the champion's score of that row (taken before it
learned, as progressive validation does). So every comparison here is on the same ordered
stream: a challenger scores exactly the rows the champion learns from, in the same order,
before learning each one, and its progressive metrics compare like for like.

**Drift.** A river drift detector (ADWIN by default; Page-Hinkley or KSWIN by choice) watches
the champion's per-row loss: the absolute error for regression, the 0/1 loss for
classification. A detection is a :class:`ModelEvent` (kind ``drift``, with the detector's
statistics and the loss before and after); with the reaction ``retrain`` it also starts a fresh
challenger (``retrain-<label count>``) learning from the drift point, which replaces the
champion once it is better over the recent window (below).

**Promotion on evidence.** Each challenger keeps the paired per-row losses of the last
``window`` rows it and the champion both scored. :func:`paired_test` compares them: the mean
loss difference ``d`` (champion minus challenger) with its standard error ``s``; the challenger
wins when ``d > margin * champion's mean loss`` and ``d / s > z`` (a one-sided paired z-test at
``z = 2.576``, p < 0.005; the window is large, so z is the t quantile), never before
``min_labels`` paired rows. Auto-promotion (on for retrain challengers and on request) records
the evidence in the ``promoted`` event. A promotion swaps roles: the challenger becomes the
champion, the old champion stays as a challenger (so promoting it back is a rollback).

>>> ops = ModelOperations("regression", detector="adwin")
>>> events = [ops.observe(0.0 if i < 600 else 5.0) for i in range(1200)]
>>> [e.kind for e in events if e is not None]
['drift']
>>> found = next(e for e in events if e is not None)
>>> 600 <= found.at_label < 700 and found.detail["loss_after"] > found.detail["loss_before"]
True
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from river import drift

from rowcast.core.errors import ConfigError
from rowcast.models.catalog import get_model
from rowcast.models.progressive import OnlineMetrics
from rowcast.models.scoring import OnlineModel, Score

Detector = Literal["adwin", "page_hinkley", "kswin", "none"]
Reaction = Literal["none", "retrain"]
DETECTORS: dict[str, Any] = {"adwin": drift.ADWIN, "page_hinkley": drift.PageHinkley,
                             "kswin": lambda: drift.KSWIN(seed=7)}
REACTIONS = ("none", "retrain")
WINDOW = 1000  # paired rows a challenger is compared over ("the recent window")
MIN_LABELS = 500  # paired rows before a challenger may be promoted automatically
MARGIN = 0.02  # the challenger's mean loss must be this fraction below the champion's
Z = 2.576  # one-sided paired z-test, p < 0.005
RECENT = 200  # rows kept to tell the loss after a change from the loss before
AFTER = 50  # the most recent rows whose mean loss a drift event reports as "after"


def row_loss(task: str, y: Any, scored: Score) -> float | None:
    """The per-row loss drift and comparisons use; None when the model has no answer yet.

    >>> row_loss("regression", 3.0, Score(1.5, 1.5)), row_loss("binary", True, Score(False, 0.2))
    (1.5, 1.0)
    """
    if scored.prediction is None:
        return None
    if task == "regression":
        return abs(float(y) - float(scored.prediction))
    return 0.0 if scored.prediction == y else 1.0


@dataclass(frozen=True)
class ModelEvent:
    """Something that happened to a deployment's models, recorded in ``rowcast.model_events``."""

    kind: str  # drift | challenger_added | promoted | challenger_removed
    at_label: int  # the champion's labels learned when it happened
    challenger: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    """A paired comparison of a challenger with the champion over the same rows."""

    n: int
    champion_loss: float
    challenger_loss: float
    z: float
    wins: bool

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "champion_loss": self.champion_loss,
                "challenger_loss": self.challenger_loss, "z": self.z, "wins": self.wins,
                "test": f"one-sided paired z-test on per-row losses, z > {Z}, "
                        f"margin {MARGIN:.0%}, at least {MIN_LABELS} rows"}


def paired_test(pairs: deque[tuple[float, float]] | list[tuple[float, float]],
                min_labels: int = MIN_LABELS, margin: float = MARGIN) -> Evidence:
    """Does the challenger beat the champion on these (champion loss, challenger loss) pairs?

    >>> paired_test([(1.0, 0.5), (1.2, 0.4)] * 300).wins
    True
    >>> paired_test([(1.0, 0.5)] * 10).wins  # too few rows
    False
    """
    n = len(pairs)
    if n == 0:
        return Evidence(0, 0.0, 0.0, 0.0, False)
    champion = sum(p[0] for p in pairs) / n
    challenger = sum(p[1] for p in pairs) / n
    d = champion - challenger
    if n > 1:
        var = sum((a - b - d) ** 2 for a, b in pairs) / (n - 1)
        z = d / math.sqrt(var / n) if var > 0 else (math.inf if d > 0 else 0.0)
    else:
        z = 0.0
    wins = n >= min_labels and d > margin * champion and z > Z
    return Evidence(n, champion, challenger, z if math.isfinite(z) else 1e9, wins)


class Challenger:
    """A model in shadow: scored on each labelled row before it learns it, never served."""

    def __init__(self, name: str, model: OnlineModel, auto_promote: bool = False,
                 window: int = WINDOW, keep_predictions: bool = False) -> None:
        self.name = name
        self.model = model
        self.progressive = OnlineMetrics(model.spec.task)
        self.pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self.auto_promote = auto_promote
        self.keep_predictions = keep_predictions
        self.shadow: list[tuple[bytes, Score]] = []  # (row key, score) since the checkpoint
        self.stored = False  # in rowcast.challengers (the learner's own retrain ones: once saved)

    def __getstate__(self) -> dict[str, Any]:
        """Challengers are pickled into every checkpoint's snapshot: the catalog spec (its
        factory is a lambda, which pickle refuses) is stored by name and looked up again."""
        state = self.__dict__.copy()
        m = self.model
        state["model"] = (m.deployment, m.estimator, m.version, m.samples_learned)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        deployment, estimator, version, samples = state["model"]
        state["model"] = OnlineModel(deployment, get_model(deployment.model), estimator,
                                     version, samples)
        self.__dict__.update(state)

    def observe(self, x: dict[str, Any], y: Any, champion_loss: float | None,
                key: bytes | None = None) -> None:
        if self.model.spec.task == "anomaly":
            scored = self.model.score(x)
            self.model.learn(x, y)
        else:
            scored = self.model.score_then_learn(x, y)  # scored before it learns the row
            self.progressive.update(y, scored)
            loss = row_loss(self.model.spec.task, y, scored)
            if loss is not None and champion_loss is not None:
                self.pairs.append((champion_loss, loss))
        if self.keep_predictions and key is not None:
            self.shadow.append((key, scored))

    def evidence(self, min_labels: int = MIN_LABELS, margin: float = MARGIN) -> Evidence:
        return paired_test(self.pairs, min_labels, margin)


class ModelOperations:
    """A deployment's drift detector and challengers (see the module docstring)."""

    def __init__(self, task: str, detector: str = "adwin", reaction: str = "none",
                 min_labels: int = MIN_LABELS, margin: float = MARGIN) -> None:
        if detector not in DETECTORS and detector != "none":
            raise ConfigError(f"unknown drift detector {detector!r}: choose one of "
                              f"{', '.join([*DETECTORS, 'none'])}")
        if reaction not in REACTIONS:
            raise ConfigError(f"unknown drift reaction {reaction!r}: choose none or retrain")
        self.task = task
        self.detector_name = detector
        self.detector = None if detector == "none" or task == "anomaly" else DETECTORS[detector]()
        self.reaction = reaction
        self.min_labels = min_labels
        self.margin = margin
        self.challengers: dict[str, Challenger] = {}
        self.labels = 0
        self.drifts = 0
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.loss_sum = 0.0
        self.loss_n = 0

    def configure(self, detector: str, reaction: str) -> None:
        """A changed choice starts a fresh detector; the challengers stay."""
        if detector != self.detector_name:
            fresh = ModelOperations(self.task, detector, reaction)
            self.detector, self.detector_name = fresh.detector, detector
            self.loss_sum, self.loss_n = 0.0, 0
        elif reaction not in REACTIONS:
            raise ConfigError(f"unknown drift reaction {reaction!r}: choose none or retrain")
        self.reaction = reaction

    def observe(self, loss: float | None) -> ModelEvent | None:
        """The champion's loss on one labelled row (before it learned it): a drift event, if
        the detector found one."""
        self.labels += 1
        if loss is None or self.detector is None:
            return None
        before = self.loss_sum / self.loss_n if self.loss_n else 0.0
        self.recent.append(loss)
        self.loss_sum += loss
        self.loss_n += 1
        self.detector.update(loss)
        if not self.detector.drift_detected:
            return None
        # the detectors see any change of the mean: only a model getting worse is a drift
        # (the loss falling as a young model learns, or as it adapts after a drift, is not)
        last = list(self.recent)[-AFTER:]
        after = sum(last) / len(last)
        older = self.loss_n - len(last)
        before = (self.loss_sum - sum(last)) / older if older > 0 else before
        self.loss_sum, self.loss_n = 0.0, 0  # the baseline of the next detection: from here
        self.recent.clear()
        if after <= before:
            return None
        self.drifts += 1
        detail: dict[str, Any] = {"detector": self.detector_name,
                                  "loss_before": before, "loss_after": after}
        for stat in ("estimation", "width", "variance", "n_detections"):
            value = getattr(self.detector, stat, None)
            if isinstance(value, int | float) and math.isfinite(value):
                detail[stat] = value
        return ModelEvent("drift", self.labels, None, detail)

    def add(self, challenger: Challenger) -> ModelEvent:
        self.challengers[challenger.name] = challenger
        return ModelEvent("challenger_added", self.labels, challenger.name,
                          {"model": challenger.model.deployment.model,
                           "auto_promote": challenger.auto_promote})

    def remove(self, name: str) -> ModelEvent | None:
        if self.challengers.pop(name, None) is None:
            return None
        return ModelEvent("challenger_removed", self.labels, name, {})

    def ready_to_promote(self) -> tuple[Challenger, Evidence] | None:
        """The auto-promoting challenger with the strongest winning evidence, if any."""
        best: tuple[Challenger, Evidence] | None = None
        for c in self.challengers.values():
            if not c.auto_promote:
                continue
            ev = c.evidence(self.min_labels, self.margin)
            if ev.wins and (best is None or ev.z > best[1].z):
                best = (c, ev)
        return best

    def compare(self) -> dict[str, dict[str, Any]]:
        """Each challenger's metrics over the whole stream and its evidence over the window."""
        return {name: {"progressive": c.progressive.values(), "labels": c.progressive.n,
                       "model": c.model.deployment.model, "auto_promote": c.auto_promote,
                       "recent": c.evidence(self.min_labels, self.margin).to_dict()}
                for name, c in self.challengers.items()}
