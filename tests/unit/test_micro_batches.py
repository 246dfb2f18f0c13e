"""The scorer's micro-batches: no timer while idle, ``within`` counted from a batch's first
event, acks only after the batch was handled, and a failing stream ends them with its error."""

from __future__ import annotations

import asyncio

import pytest

from rowcast.streams.micro_batches import micro_batches


class FakeStream:
    """Events put in by the test as it goes, acks recorded (what a faust stream offers)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.acked: list = []

    def noack(self) -> FakeStream:
        return self

    async def events(self):
        while True:
            event = await self.incoming.get()
            if isinstance(event, Exception):
                raise event
            if event is None:
                return
            yield event

    async def ack(self, event) -> bool:
        self.acked.append(event)
        return True


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_an_idle_stream_arms_no_timer_and_a_batch_waits_within_from_its_first_event():
    async def scenario():
        stream = FakeStream()
        batches = micro_batches(stream, max_events=10, within_s=0.05)
        nxt = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0.2)  # idle: four times ``within``, and nothing was yielded
        assert not nxt.done()
        loop = asyncio.get_running_loop()
        soon = loop.time() + 5  # the test's own 10 s guard is the only timer
        assert not [h for h in loop._scheduled if not h.cancelled() and h.when() < soon]
        started = loop.time()
        stream.incoming.put_nowait("a")
        await asyncio.sleep(0.02)
        stream.incoming.put_nowait("b")  # inside the first event's ``within``: same batch
        batch = await nxt
        waited = loop.time() - started
        await batches.aclose()
        return batch, waited

    batch, waited = run(scenario())
    assert batch == ["a", "b"]
    assert 0.04 <= waited < 0.15


def test_a_full_batch_goes_at_once_and_the_rest_follows():
    async def scenario():
        stream = FakeStream()
        for e in range(5):
            stream.incoming.put_nowait(e)
        batches = micro_batches(stream, max_events=3, within_s=60)  # never waits 60 s
        got = [await batches.__anext__()]
        stream.incoming.put_nowait(None)  # the stream ends: what is buffered still comes
        got.append(await batches.__anext__())
        with pytest.raises(StopAsyncIteration):
            await batches.__anext__()
        return got, stream.acked

    got, acked = run(scenario())
    assert got == [[0, 1, 2], [3, 4]]
    assert acked == [0, 1, 2, 3, 4]


def test_events_are_acked_only_after_their_batch_was_handled():
    async def scenario():
        stream = FakeStream()
        stream.incoming.put_nowait("a")
        batches = micro_batches(stream, max_events=1, within_s=0.01)
        batch = await batches.__anext__()
        acked_while_handling = list(stream.acked)
        stream.incoming.put_nowait("b")
        await batches.__anext__()  # asking for the next one says the first was handled
        acked_after = list(stream.acked)
        await batches.aclose()  # not handled: "b" stays unacked, faust redelivers it
        return batch, acked_while_handling, acked_after, list(stream.acked)

    batch, during, after, closed = run(scenario())
    assert (batch, during, after, closed) == (["a"], [], ["a"], ["a"])


def test_a_failing_stream_ends_the_batches_with_its_error_after_what_came_before():
    async def scenario():
        stream = FakeStream()
        stream.incoming.put_nowait("a")
        stream.incoming.put_nowait(RuntimeError("consumer gone"))
        batches = micro_batches(stream, max_events=10, within_s=0.05)
        first = await batches.__anext__()
        with pytest.raises(RuntimeError, match="consumer gone"):
            await batches.__anext__()
        return first

    assert run(scenario()) == ["a"]
