"""Burrow's rules, one case each, and the worst-partition aggregation."""

from __future__ import annotations

import pytest

from rowcast.ops.verdict import Sample, Verdict, evaluate, judge, slot_verdict


def samples(*points: tuple[float, int, int]) -> list[Sample]:
    return [Sample(*p) for p in points]


@pytest.mark.parametrize(("points", "last_commit", "expected"), [
    # caught up at some point of the window
    (((0, 10, 15), (5, 20, 20), (10, 25, 30)), 10, Verdict.OK),
    # behind, but lag shrinking: keeping up
    (((0, 10, 50), (5, 30, 60), (10, 55, 65)), 10, Verdict.OK),
    # committing, yet lag grows at every step: falling behind
    (((0, 10, 20), (5, 15, 30), (10, 20, 45)), 10, Verdict.WARN),
    # lag and no movement of the committed offset over the window
    (((0, 10, 20), (5, 10, 20), (10, 10, 25)), 8, Verdict.STALL),
    # two samples a second apart between two commits (a learner checkpoints every second, faust
    # and the sink commit every 0.5 s): not stuck, only between commits
    (((8, 10, 20), (9, 10, 22)), 8, Verdict.OK),
    # ...and the same standing still for STALL_AFTER_S is stuck
    (((4, 10, 20), (9, 10, 22)), 8, Verdict.STALL),
    # no commit for longer than the stop threshold while there is lag
    (((0, 10, 20), (5, 10, 20), (10, 10, 20)), -100, Verdict.STOP),
    # never committed and lag: nobody consumes
    (((0, 0, 5),), None, Verdict.STOP),
    # no samples yet
    ((), None, Verdict.OK),
])
def test_rules(points, last_commit, expected) -> None:
    assert evaluate(samples(*points), now=10, last_commit_at=last_commit,
                    stop_after_s=60) == expected


def test_a_consumer_is_as_bad_as_its_worst_partition_and_error_when_down() -> None:
    assert judge([Verdict.OK, Verdict.STALL, Verdict.WARN]) == Verdict.STALL
    assert judge([]) == Verdict.OK
    assert judge([Verdict.OK], process_up=False) == Verdict.ERROR


def test_the_docstring_example_holds() -> None:
    import doctest

    import rowcast.ops.verdict as module

    assert doctest.testmod(module).failed == 0


def test_slot_verdict_by_age() -> None:
    assert [slot_verdict(age, 30, 60) for age in (0, 29.9, 30, 59, 60)] == [
        Verdict.OK, Verdict.OK, Verdict.WARN, Verdict.WARN, Verdict.STOP]


def test_a_failure_of_an_older_generation_does_not_hide_a_missing_column() -> None:
    from rowcast.models.deployment import Deployment, Feature
    from rowcast.ops.monitor import _current, _missing

    d = Deployment("spend", "public", "c", "y", (Feature("x", "number"),), "linear_regression",
                   ("id",), version=3, created_us=5)
    stale = {"generation": "5.2", "reason": "snapshot_refused", "error": "old", "since": 1.0}
    failure = _current(d, stale) or _missing(d, {"spend": ["'x' of public.c"]}, {}, 2.0)
    assert failure is not None and failure["reason"] == "missing_column"
    assert failure["generation"] == d.generation == "5.3"
    assert _current(d, {**stale, "generation": "5.3"})["reason"] == "snapshot_refused"
