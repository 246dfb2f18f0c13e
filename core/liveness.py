"""A process whose loop stops coming round exits, with every thread's stack in its log.

Why: a rowcast process that is alive but does nothing is the one failure no supervisor sees.
The client libraries can do that to it. kafka-python 3.0.12's blocking calls wait on an event
with no deadline (its issue 3121, fixed after that release): one made while the broker
restarted was seen never to return. librdkafka's synchronous commit has hung the same way
(confluent-kafka-python issue 1801). The fault tier once caught the sink so, after a broker
restart: alive, lag growing, nothing logged.

Each process's loop calls :func:`beat` once a round (a monotonic clock read and a store).
:class:`Watchdog` checks from its own thread. When no beat came for ``limit_s`` it logs one
ERROR line naming the process and where its loop's thread is, logs every thread's stack, and
exits with :data:`STALLED_EXIT`. A service manager, or the worker's supervisor, then starts it
again. Nothing is lost: every process resumes from what it
made durable (slot position, committed offsets, checkpoints), and what it replays is ignored
downstream.

The limit is far above any wait a healthy loop makes. The longest is a send to a broker that is
down, which fails after the producer's delivery timeout (120 s), so the default is 300 s.

>>> clock = iter([0.0, 0.0, 10.0, 31.0]).__next__
>>> exits = []
>>> dog = Watchdog("sink", limit_s=20.0, clock=clock, exit=exits.append, dump=lambda: None)
>>> beat(clock)          # the loop came round at t=0
>>> dog.check()          # t=0: fine
True
>>> beat(clock)          # and again at t=10
>>> dog.check()          # t=31: 21 s without a beat
False
>>> exits
[75]
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)

STALLED_EXIT = 75  # EX_TEMPFAIL: the worker's supervisor and service managers start it again

_last_beat = time.monotonic()


def beat(clock: Callable[[], float] = time.monotonic) -> None:
    """The loop came round: called once per round of every long-running process's loop."""
    global _last_beat
    _last_beat = clock()


def since_beat(clock: Callable[[], float] = time.monotonic) -> float:
    """Seconds since the last :func:`beat`."""
    return clock() - _last_beat


# frames under these are a library's or Python's, not rowcast's own
_LIBRARY_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib",
                                                           "platlib")})


def _frame(f: traceback.FrameSummary) -> str:
    return f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})"


def _dump_all_threads() -> None:
    """Every thread's stack, through logging: faust replaces ``sys.stderr`` with a proxy that
    has no file descriptor, so ``faulthandler`` cannot write to it."""
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        log.error("thread %s (%#x), most recent call last:\n%s", names.get(ident, "?"), ident,
                  stack.rstrip())


class Watchdog:
    """Exits the process when :func:`beat` stops being called for ``limit_s`` seconds."""

    def __init__(self, process: str, limit_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], object] = os._exit,
                 dump: Callable[[], None] = _dump_all_threads) -> None:
        self.process = process
        self.limit_s = limit_s
        self._clock = clock
        self._exit = exit
        self._dump = dump
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()  # made by the thread that runs the loop
        self.thread: threading.Thread | None = None

    def check(self) -> bool:
        """False (and the process exits) when the loop has not come round within the limit."""
        stalled = since_beat(self._clock)
        if stalled < self.limit_s:
            return True
        log.error("%s: its loop has not come round for %.1f s (stuck in %s); exiting with "
                  "code %d so that it is started again, every thread's stack follows",
                  self.process, stalled, self._where(), STALLED_EXIT)
        try:
            self._dump()
        finally:  # whatever the dump met, the process must not stay up stuck
            self._exit(STALLED_EXIT)
        return False

    def _where(self) -> str:
        """Where the loop's thread waits: its innermost frame, and the innermost of rowcast's
        own frames that led there (the call into a library that did not return)."""
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "an unknown place"
        stack = traceback.extract_stack(frame)
        where = _frame(stack[-1])
        own = next((f for f in reversed(stack) if not f.filename.startswith(_LIBRARY_DIRS)), None)
        return where if own is None or own is stack[-1] else f"{where}, called from {_frame(own)}"

    def start(self) -> Watchdog:
        """Checks every quarter of the limit from a daemon thread; a limit of 0 watches nothing."""
        if self.limit_s > 0:
            beat(self._clock)  # the loop has not started yet: setting up is not a stall
            self.thread = threading.Thread(target=self._run, name="rowcast-watchdog",
                                           daemon=True)
            self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()  # run in a thread (a benchmark, a test), the process goes on without it

    def _run(self) -> None:
        while not self._stop.wait(self.limit_s / 4):
            if not self.check():
                return
