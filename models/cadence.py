"""How often the learner publishes a model version to the scorers: as often as the snapshot's
cost allows.

Every published version is unpickled by every worker that serves the deployment. A linear
model's snapshot loads in ~0.2 ms, so once a second is free; an adaptive random forest's
(5.6 MB) took 1.28 s, so publishing it every second would keep each worker unpickling all the
time. The interval is therefore the load time divided by the CPU share a worker may spend
loading (:data:`WORKER_LOAD_SHARE`, 5 %), never below the learner's checkpoint interval (the
cadence of cheap models stays what it was).

Loading is measured, not guessed: the learner times a real load of a published snapshot now
and then (:class:`LoadCost`) and scales it by size in between (a snapshot's load time grows
with its size), so measuring does not itself cost the learner what it saves the workers.

>>> publish_interval(0.0002, floor_s=1.0)
1.0
>>> round(publish_interval(1.28, floor_s=1.0), 6)
25.6
>>> cost = LoadCost()
>>> cost.needs_measuring(1000)
True
>>> cost.measured(1000, 0.5); cost.needs_measuring(1100), cost.estimate(1100)
(False, 0.55)
>>> cost.needs_measuring(2000)  # grew by more than a quarter: time a real load again
True
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_LOAD_SHARE = 0.05  # at most this share of a worker's CPU goes to loading new versions
REMEASURE_GROWTH = 1.25  # re-time a load once the snapshot grew (or shrank) by this factor


def publish_interval(load_s: float, floor_s: float, share: float = WORKER_LOAD_SHARE) -> float:
    """Seconds between two published versions so loading costs a worker at most ``share`` of
    one CPU; at least ``floor_s``."""
    return max(floor_s, load_s / share)


@dataclass
class LoadCost:
    """What loading one deployment's snapshot costs, as last measured."""

    size: int = 0
    load_s: float = 0.0

    def needs_measuring(self, size: int) -> bool:
        if self.size <= 0:
            return True
        ratio = size / self.size
        return ratio > REMEASURE_GROWTH or ratio < 1 / REMEASURE_GROWTH

    def measured(self, size: int, load_s: float) -> None:
        self.size, self.load_s = size, load_s

    def estimate(self, size: int) -> float:
        """Load seconds for a snapshot of ``size`` bytes (0 before any measurement)."""
        return self.load_s * size / self.size if self.size > 0 else 0.0
