"""A verdict per consumer, not just numbers: Burrow's rules over a window of lag samples.

Burrow (LinkedIn's consumer-lag evaluator) judges a consumer by how its committed offset and its
lag moved over a window, because a lag figure alone cannot tell "busy but keeping up" from
"stuck". The rules, per partition, evaluated over the samples of the last ``window_s`` seconds:

- **OK**: lag was zero at some sample, or it went down.
- **WARN**: the consumer commits, but lag grew at every step of the window (falling behind).
- **STALL**: lag > 0 and the committed offset did not move over the whole window, and the
  window's samples span at least :data:`STALL_AFTER_S` (or half a shorter window): every stage
  commits at least once a second while it works, so two samples taken between two commits are
  not a stall.
- **STOP**: no commit for ``stop_after_s`` (default 60 s) while there is lag: nobody consumes.
- **ERROR**: the process that owns the group is down (the caller knows; see :func:`judge`).

A consumer's verdict is its worst partition's. Thresholds are settings; defaults documented here.

>>> s = [Sample(0, 10, 12), Sample(5, 10, 20), Sample(10, 10, 30)]
>>> evaluate(s, now=10, last_commit_at=0, stop_after_s=60).name
'STALL'
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

STALL_AFTER_S = 5.0  # the shortest stand-still called STALL (commits come every 0.5-1 s)


class Verdict(IntEnum):
    """Ordered by severity, so the worst of several is ``max``."""

    OK = 0
    WARN = 1
    STALL = 2
    STOP = 3
    ERROR = 4


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of one partition: when, the group's committed offset, the log end."""

    at_s: float
    committed: int
    log_end: int

    @property
    def lag(self) -> int:
        return max(self.log_end - self.committed, 0)


def evaluate(samples: Sequence[Sample], now: float, last_commit_at: float | None,
             stop_after_s: float = 60.0, stall_after_s: float = STALL_AFTER_S) -> Verdict:
    """One partition's verdict from its samples (oldest first) within the window; a window
    shorter than ``stall_after_s`` should pass a shorter one (see :func:`stall_after`)."""
    if not samples:
        return Verdict.OK
    lags = [s.lag for s in samples]
    if lags[-1] == 0 or 0 in lags:
        return Verdict.OK
    if last_commit_at is None or now - last_commit_at >= stop_after_s:
        return Verdict.STOP
    if len(samples) < 2:
        return Verdict.OK
    if samples[0].committed == samples[-1].committed:
        stood = samples[-1].at_s - samples[0].at_s
        return Verdict.STALL if stood >= stall_after_s else Verdict.OK
    if all(later > earlier for earlier, later in zip(lags, lags[1:], strict=False)):
        return Verdict.WARN
    return Verdict.OK


def stall_after(window_s: float) -> float:
    """The stand-still called STALL for a window: :data:`STALL_AFTER_S`, or half the window
    when that is shorter (the samples of a window span less than the window).

    >>> stall_after(30.0), stall_after(4.0)
    (5.0, 2.0)
    """
    return min(STALL_AFTER_S, window_s / 2)


def judge(partition_verdicts: Iterable[Verdict], process_up: bool = True) -> Verdict:
    """A consumer's verdict: ERROR when its process is down, else its worst partition's."""
    if not process_up:
        return Verdict.ERROR
    return max(partition_verdicts, default=Verdict.OK)


def slot_verdict(behind_seconds: float, window_s: float, stop_after_s: float) -> Verdict:
    """The replication slot's verdict from its age in seconds (heartbeats): STOP when nothing
    was confirmed for ``stop_after_s``, WARN beyond the window, else OK."""
    if behind_seconds >= stop_after_s:
        return Verdict.STOP
    if behind_seconds >= window_s:
        return Verdict.WARN
    return Verdict.OK
