"""A thread with a PostgreSQL connection of its own, where the learner's checkpoints are written
while it goes on learning (``learner_write_behind``).

Why: a checkpoint's transaction is mostly the server's work (a bulk load's checkpoint writes
20,000 learned-row markers, ~0.15 s), and the learner used to wait for it. Here it waits only
when it has a second checkpoint to hand over before the first committed: one is in flight at
most (:class:`rowcast.streams.learner.Learner` keeps that rule and handles the result).

>>> class Conn:  # stands for the thread's psycopg connection
...     closed = broken = False
...     def close(self):
...         self.closed = True
>>> behind = WriteBehind(Conn)
>>> behind.submit(lambda conn: type(conn).__name__).result()
'Conn'
>>> behind.submit(lambda conn: 1 / 0).exception()  # a job's failure goes to its submitter
ZeroDivisionError('division by zero')
>>> behind.close()
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class WriteBehind:
    """Runs jobs one at a time, in submission order, on one connection made by ``connect``
    (again after it closed or broke: the job that failed on it raised to its submitter)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rowcast-checkpoint")

    def submit(self, job: Callable[[Any], T]) -> Future[T]:
        """Run ``job(connection)`` in the thread; its result or exception in the future."""
        return self._pool.submit(self._run, job)

    def _run(self, job: Callable[[Any], T]) -> T:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect()
        return job(self._conn)

    def close(self) -> None:
        """Wait for what was submitted, then close the connection."""
        self._pool.shutdown(wait=True)
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
