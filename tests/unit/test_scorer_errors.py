"""The scoring agent never dies quietly: a bad record is dead-lettered, anything else exits.

Issue 13, items 3 and 4: every unexpected error either sets the one record it belongs to aside
(with its reason) while the rest of the batch is scored, or ends the process with
``RETRY_EXIT`` before faust can commit the batch, so the supervisor starts a fresh worker.
A deployment whose model cannot be built fails alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from rowcast.core.envelope import SourceInfo, build_value
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.serving import ServingSet
from rowcast.streams.scorer import RETRY_EXIT, BatchScorer, drive
from tests.helpers.scorer_doubles import Exited, Msg, Published, record_exits

FRAGILE = "tests.helpers.fragile_models:make"
MISSING = "rowcast_no_such_module_anywhere:make"
REPO = Path(__file__).resolve().parents[2]




def deployment(name: str, model: str = "linear_regression", version: int = 1) -> Deployment:
    return Deployment(name, "public", "t", "y", (Feature("x", "number"),), model, ("id",),
                      version=version)


def envelope(i: int, x: float, lsn: object | None = None) -> bytes:
    value = build_value(op="c", before=None, after={"id": i, "x": x, "y": 2 * x},
                        source=SourceInfo("t", "db", "public", "t", 1000 + i, 1, 10 * i),
                        tx_order=1, now_us=10 * i)
    if lsn is not None:
        value["source"]["lsn"] = lsn
    return orjson.dumps(value)


def msg(offset: int, i: int, x: float, lsn: object | None = None) -> Msg:
    return Msg("t.public.t", 0, offset, orjson.dumps({"id": i}), envelope(i, x, lsn))


def scored(published: Published, name: str) -> list[int]:
    return [p.key["id"] for p in published.calls[-1][0] if p.deployment == name]


def letters(published: Published) -> list[tuple[str, str, int | None]]:
    return [(d.reason, d.error, d.offset) for d in published.calls[-1][1]]


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return record_exits(monkeypatch)


def test_a_malformed_lsn_is_dead_lettered_and_the_rows_after_it_are_scored():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment("good")]), published)
    asyncio.run(scorer.score([msg(0, 1, 1.0), msg(1, 2, 2.0, lsn="0/16B3748"), msg(2, 3, 3.0)]))
    assert scored(published, "good") == [1, 3]
    [(reason, error, offset)] = letters(published)
    assert (reason, offset) == ("bad_envelope", 1)
    assert "ValueError" in error and "0/16B3748" in error


def test_a_model_failing_on_one_row_dead_letters_that_row_for_that_deployment_only():
    published = Published()
    serving = ServingSet.fresh([deployment("good"), deployment("fragile", FRAGILE)])
    scorer = BatchScorer(serving, published)
    asyncio.run(scorer.score([msg(0, 1, 1.0), msg(1, 2, 13.0), msg(2, 3, 3.0)]))
    assert scored(published, "good") == [1, 2, 3]
    assert scored(published, "fragile") == [1, 3]
    [(reason, error, offset)] = letters(published)
    assert (reason, offset) == ("score_failed", 1)
    assert error.startswith("fragile: ValueError: fragile model cannot score")
    # the failed row does not reach the learner either (nothing half-done for it)
    labels = published.calls[-1][2]
    assert sorted((e.deployment, e.key["id"]) for e in labels) == [
        ("fragile", 1), ("fragile", 3), ("good", 1), ("good", 2), ("good", 3)]


def test_an_error_raised_by_the_serving_set_itself_is_pinned_to_its_event():
    class Exploding(ServingSet):
        def handle(self, events, now_us=None):
            events = list(events)
            if any(e.key["id"] == 2 for e in events):
                raise KeyError("boom")
            return super().handle(events, now_us)

    published = Published()
    scorer = BatchScorer(Exploding.fresh([deployment("good")]), published)
    asyncio.run(scorer.score([msg(0, 1, 1.0), msg(1, 2, 2.0), msg(2, 3, 3.0)]))
    assert scored(published, "good") == [1, 3]
    [(reason, error, offset)] = letters(published)
    assert (reason, offset) == ("score_failed", 1) and "KeyError" in error


def test_a_deployment_whose_model_cannot_be_built_fails_alone_until_redeployed():
    serving = ServingSet.fresh([deployment("good"), deployment("broken", MISSING)])
    assert set(serving.failed) == {"broken"}
    assert "cannot import module" in serving.failed["broken"].error
    assert serving.tables() == [("public", "t")]

    published = Published()
    asyncio.run(BatchScorer(serving, published).score([msg(0, 1, 1.0), msg(1, 2, 2.0)]))
    assert scored(published, "good") == [1, 2]
    assert [(r, o) for r, _, o in letters(published)] == [("model_unavailable", 0),
                                                          ("model_unavailable", 1)]
    assert all(e.startswith("broken: ") and "cannot import" in e for _, e, _ in letters(published))

    serving.update([deployment("good"), deployment("broken", "linear_regression", version=2)])
    assert serving.failed == {}
    assert {m.deployment.name for m in serving.models()} == {"good", "broken"}


def test_an_unexpected_error_outside_any_record_exits_before_anything_is_published(exits):
    def before_batch(_events):
        raise RuntimeError("registry exploded")

    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment("good")]), published, before_batch)
    with pytest.raises(Exited):
        asyncio.run(scorer.score([msg(0, 1, 1.0)]))
    assert exits == [RETRY_EXIT] and published.calls == []


def test_the_agent_loop_exits_on_anything_its_batches_raise(exits):
    async def batches():
        yield [msg(0, 1, 1.0)]
        raise OSError("the stream broke")

    published = Published()
    with pytest.raises(Exited):
        asyncio.run(drive(batches(), BatchScorer(ServingSet.fresh([deployment("good")]),
                                                 published)))
    assert exits == [RETRY_EXIT] and len(published.calls) == 1


@pytest.mark.timeout(60)
def test_a_broker_gone_longer_than_the_delivery_timeout_ends_the_process_for_a_restart(tmp_path):
    """Without a broker the producer's records time out (``message.timeout.ms``, shortened):
    the real BatchPublisher over a real confluent producer pointed at a port nobody listens on,
    in a real process, which must exit with RETRY_EXIT (not hang, not carry on)."""
    script = tmp_path / "no_broker.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio
        from rowcast.connectors.fast_kafka import make_fast_producer
        from rowcast.core.settings import Settings
        from rowcast.models.serving import ServingSet
        from rowcast.streams.publishing import BatchPublisher
        from rowcast.models.deployment import Deployment, Feature
        from rowcast.ops.devstack.process import free_port
        from rowcast.streams.scorer import BatchScorer

        class Msg:
            topic, partition, offset, key, headers = "t.public.t", 0, 0, b'{{"id":1}}', []
            value = {envelope(1, 1.0)!r}

        settings = Settings(kafka_bootstrap=f"127.0.0.1:{{free_port()}}", _env_file=None)
        good = Deployment("good", "public", "t", "y", (Feature("x", "number"),),
                          "linear_regression", ("id",))
        producer = make_fast_producer(settings, **{{"message.timeout.ms": 1000}})
        scorer = BatchScorer(ServingSet.fresh([good]), BatchPublisher(settings, producer))
        asyncio.run(scorer.score([Msg()]))
        print("carried on")
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=50, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == RETRY_EXIT, done.stderr
    assert "carried on" not in done.stdout
    assert "_MSG_TIMED_OUT" in done.stderr and "restarting the worker" in done.stderr

