"""Micro-batches of a faust stream's events that wait for the first event without ticking.

Why not faust's ``Stream.take_events(max_, within)``: its loop waits for a full buffer with
``within`` as the timeout, again and again, whether events come or not. With the 3 ms the
scorer uses (its latency at a trickle), an idle worker woke ~330 times a second, each round
building and cancelling futures: 33-43 ms of CPU per second measured on an idle pipeline (the
largest share of rowcast's idle cost), on the same cores as the application's writers.

Here the wait for a batch's first event has no timeout at all; ``within`` starts when it
arrives and bounds how long the rest of the batch may take to come. Events are acked (so faust
may commit their offsets) only when the consumer of the batches asks for the next one, that is
after it has handled the batch: the same at-least-once contract as ``take_events``.

>>> import asyncio
>>> class Stream:  # what this module uses of a faust stream
...     def __init__(self, events): self.events_, self.acked = events, []
...     def noack(self): return self
...     async def events(self):
...         for e in self.events_: yield e
...     async def ack(self, event): self.acked.append(event)
>>> async def first_two(stream):
...     batches = micro_batches(stream, max_events=2, within_s=0.01)
...     got = [await batches.__anext__(), await batches.__anext__()]
...     await batches.aclose()
...     return got
>>> stream = Stream(["a", "b", "c"])
>>> asyncio.run(first_two(stream)), stream.acked
([['a', 'b'], ['c']], ['a', 'b'])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol


class AckingStream(Protocol):
    """The part of :class:`faust.StreamT` used here."""

    def noack(self) -> AckingStream: ...

    def events(self) -> AsyncIterable[Any]: ...

    async def ack(self, event: Any) -> bool | None: ...


_END = object()


async def micro_batches(stream: AckingStream, max_events: int, within_s: float,
                        ) -> AsyncIterator[list[Any]]:
    """Lists of up to ``max_events`` events: each yielded once its first event has waited
    ``within_s`` for more, or at once when full; acked when the next is asked for."""
    manual = stream.noack()
    queue: asyncio.Queue = asyncio.Queue(maxsize=max_events)

    async def pump() -> None:
        try:
            async for event in manual.events():
                await queue.put(event)
        except Exception as exc:  # the stream failed: the batches end with its error
            await queue.put(exc)
        else:
            await queue.put(_END)

    pumping = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await queue.get()  # idle: no timer, no wake-up until an event comes
            batch: list[Any] = []
            deadline = loop.time() + within_s
            while True:
                if item is _END or isinstance(item, Exception):
                    break
                batch.append(item)
                if len(batch) >= max_events:
                    item = None
                    break
                if not queue.empty():
                    item = queue.get_nowait()
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    item = None
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    item = None
                    break
            if batch:
                yield batch
                for event in batch:
                    await manual.ack(event)
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumping
