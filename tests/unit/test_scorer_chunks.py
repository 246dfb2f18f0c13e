"""The scorer works through a faust batch in chunks, so its memory does not grow with the batch.

Issue 15 (every rowcast process <= 200 MB): a faust batch of 16 change batch records is 8,000
rows, and scoring them at once kept ~3 kB of Python objects per row alive until the whole batch
was published. Now a batch is scored a chunk of ~``chunk_rows`` rows at a time, the next chunk
while the one before is published, and the guarantees stay: the batch's body returns only once
every chunk is acknowledged, chunks are published one at a time in order, watermarks go last,
and a chunk Kafka refuses ends the process before anything after it is published.
"""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from dataclasses import replace

import pytest

from rowcast.core.change_batch import BATCH_HEADER, BATCH_KEY, ChangeBatch
from rowcast.core.envelope import WATERMARK_HEADER, WATERMARK_KEY
from rowcast.core.errors import RetryableError
from rowcast.core.prediction import PredictionRecord
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.serving import ServingSet
from rowcast.streams.scorer import RETRY_EXIT, BatchScorer
from tests.helpers.scorer_doubles import Exited, Msg, Published, record_exits

TOPIC = "t.public.t"


def deployment(name: str = "good") -> Deployment:
    return Deployment(name, "public", "t", "y", (Feature("x", "number"), Feature("c", "category")),
                      "linear_regression", ("id",))


def batch_msg(offset: int, ids: range, partition: int = 0) -> Msg:
    """One change batch record of the rows ``ids`` (every third one carries its label)."""
    batch = ChangeBatch("t", "db", "public", "t", ("id", "x", "c", "y"), ("id",))
    for i in ids:
        batch.add("c", None, {"id": i, "x": float(i % 17), "c": "ab"[i % 2],
                              "y": float(i) if i % 3 == 0 else None},
                  lsn=1000 + 10 * i, commit_lsn=1005 + 10 * i, tx_order=1, xid=50 + i,
                  commit_us=1_700_000_000_000_000 + i)
    return Msg(TOPIC, partition, offset, BATCH_KEY, batch.encode(now_us=1), [(BATCH_HEADER, b"1")])


def watermark_msg(offset: int, lsn: int, partition: int = 0) -> Msg:
    return Msg(TOPIC, partition, offset, WATERMARK_KEY, None,
               [(WATERMARK_HEADER, str(lsn).encode())])


def records(n: int, rows_each: int) -> list[Msg]:
    return [batch_msg(k, range(k * rows_each, (k + 1) * rows_each)) for k in range(n)]


def comparable(predictions: list) -> list:
    return [replace(p, scored_at_us=0) if isinstance(p, PredictionRecord) else p
            for p in predictions]


def without_times(labels: list) -> list:
    return [replace(e, at_us=0) if e.kind == "watermark" else e for e in labels]


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return record_exits(monkeypatch)


def test_a_batch_is_published_in_chunks_that_add_up_to_the_batch_scored_whole():
    messages = [*records(5, 3), watermark_msg(9, 1200)]
    serving = ServingSet.fresh([deployment()])
    whole, chunked = Published(), Published()
    asyncio.run(BatchScorer(serving, whole, chunk_rows=10_000).score(messages))
    asyncio.run(BatchScorer(serving, chunked, chunk_rows=6).score(messages))

    assert len(whole.calls) == 1
    # a chunk closes once it holds 6 rows or more, never inside a record: 6, 6, 3 rows
    assert [len(p) for p, _, _ in chunked.calls] == [6, 6, 3]
    assert comparable([p for c in chunked.calls for p in c[0]]) == comparable(whole.calls[0][0])
    labels = [e for c in chunked.calls for e in c[2]]
    assert without_times(labels) == without_times(whole.calls[0][2])
    # the watermark comes with the last chunk, after every label event of the batch
    assert [e.kind for c in chunked.calls[:-1] for e in c[2]].count("watermark") == 0
    assert labels[-1].kind == "watermark"


def test_watermarks_after_the_last_change_go_with_the_last_chunk_not_a_chunk_of_their_own():
    published = Published()
    scorer = BatchScorer(ServingSet.fresh([deployment()]), published, chunk_rows=6)
    asyncio.run(scorer.score([*records(2, 3), watermark_msg(2, 1040),
                              batch_msg(3, range(6, 12)), watermark_msg(4, 1120)]))
    assert [len(p) for p, _, _ in published.calls] == [6, 6]
    assert [e.kind for e in published.calls[0][2]].count("watermark") == 0
    assert [e.kind for e in published.calls[1][2]][-2:] == ["watermark", "watermark"]


def test_a_batch_of_watermarks_only_is_still_published_once():
    published = Published()
    asyncio.run(BatchScorer(ServingSet.fresh([deployment()]), published, chunk_rows=1)
                .score([watermark_msg(0, 1100), watermark_msg(1, 1200)]))
    [(predictions, dead, labels)] = published.calls
    assert predictions == [] and dead == [] and [e.kind for e in labels] == ["watermark"] * 2


class Gated:
    """A publisher whose call number ``hold`` waits for the test to let it finish; it notes
    when each call starts and ends, so overlapping or reordered publishes show."""

    def __init__(self, hold: int) -> None:
        self.hold = hold
        self.entered = threading.Event()
        self.release = threading.Event()
        self.log: list[tuple[str, int]] = []
        self.sizes: list[int] = []

    def publish(self, predictions, dead_letters=(), labels=()) -> int:
        call = len(self.sizes)
        self.log.append(("start", call))
        self.sizes.append(len(predictions))
        if call == self.hold:
            self.entered.set()
            assert self.release.wait(30), "the test never let the publish finish"
        self.log.append(("end", call))
        return len(predictions)


@pytest.mark.parametrize("hold", [0, 1, 2])
def test_the_batch_returns_only_once_every_chunk_is_acknowledged_one_at_a_time(hold, exits):
    publisher = Gated(hold)
    scorer = BatchScorer(ServingSet.fresh([deployment()]), publisher, chunk_rows=4)

    async def run() -> None:
        task = asyncio.ensure_future(scorer.score(records(3, 4)))
        await asyncio.get_running_loop().run_in_executor(None, publisher.entered.wait, 30)
        assert not task.done(), "the batch body returned while a chunk was not acknowledged"
        assert ("start", hold + 1) not in publisher.log, "a chunk was sent before the last one's ack"
        publisher.release.set()
        await task

    asyncio.run(run())
    assert publisher.sizes == [4, 4, 4]
    assert publisher.log == [(what, call) for call in range(3) for what in ("start", "end")]


def test_a_chunk_kafka_refuses_ends_the_process_before_any_later_chunk_is_published(exits):
    class RefusesFirst(Published):
        def publish(self, predictions, dead_letters=(), labels=()) -> int:
            super().publish(predictions, dead_letters, labels)
            if len(self.calls) == 1:
                raise RetryableError("Kafka did not acknowledge 1 of 4 records")
            return len(predictions)

    published = RefusesFirst()
    scorer = BatchScorer(ServingSet.fresh([deployment()]), published, chunk_rows=4)
    with pytest.raises(Exited):
        asyncio.run(scorer.score(records(3, 4)))
    assert exits == [RETRY_EXIT] and len(published.calls) == 1


def test_before_batch_sees_every_row_before_it_is_scored(exits):
    seen: list[int] = []
    published = Published()

    def before_batch(events) -> None:
        assert len(published.calls) <= len(seen)  # nothing of this chunk was published yet
        seen.append(len(events))

    scorer = BatchScorer(ServingSet.fresh([deployment()]), published, before_batch,
                         chunk_rows=4)
    asyncio.run(scorer.score(records(3, 4)))
    assert seen == [4, 4, 4] and [len(p) for p, _, _ in published.calls] == [4, 4, 4]


class Counting:
    """Acknowledges and forgets, as Kafka would: nothing of a chunk outlives its publish."""

    def publish(self, predictions, dead_letters=(), labels=()) -> int:
        return len(predictions)


def peak_traced_bytes(scorer: BatchScorer, messages: list[Msg]) -> int:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        asyncio.run(scorer.score(messages))
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_the_memory_a_batch_takes_does_not_grow_with_the_number_of_its_records():
    """A faust batch of 16 records of 500 rows (the defaults) peaks at about what two of its
    records alone take; scored whole it took about 16 times that."""
    serving = ServingSet.fresh([deployment()])
    batch = records(16, 500)
    asyncio.run(BatchScorer(serving, Counting()).score(batch[:1]))  # what is made once
    one = peak_traced_bytes(BatchScorer(serving, Counting(), chunk_rows=500), batch[:1])
    chunked = peak_traced_bytes(BatchScorer(serving, Counting(), chunk_rows=500), batch)
    whole = peak_traced_bytes(BatchScorer(serving, Counting(), chunk_rows=10**9), batch)
    print(f"peak traced: one record {one}, 16 in chunks {chunked}, 16 whole {whole}")
    assert chunked < 3 * one, (one, chunked)
    assert whole > 8 * one, (one, whole)  # what the chunks save: the measure can tell
