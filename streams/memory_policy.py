"""How rowcast's long-running processes use memory: CPython's cyclic garbage collector and
glibc's malloc arenas.

Its own module (standard library only) so the source and the sink can use it without importing
the scorer's faust and river modules (they would cost each of them ~80 MB of RSS).
"""

from __future__ import annotations

import ctypes
import gc
import os

# glibc's mallopt parameter for the most arenas (malloc.h: M_ARENA_MAX)
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2

# young objects between collections: above what one scored batch (a worker) or one polled
# batch of label records (the learner) keeps alive, ~20 per row
GC_YOUNG_OBJECTS = 20_000


def steady_gc() -> None:
    """Keep the cyclic garbage collector off the per-row path of a long-running process.

    Why: a batch keeps ~20 objects per row alive until it is handled (scored and published,
    learned, written), so with CPython's defaults (a collection every 700 new objects) they are
    scanned in several young collections and promoted, which soon triggers full collections
    over everything the process holds (faust, Kafka clients, river models, the learner's
    pending maps): in ``bench/worker.py`` 7.6 µs per row (18.7 µs with the default collector,
    11.1 without); the learner went from ~37 to ~30 µs of CPU per label on a 300k-row COPY.
    Freezing what the process set up moves it out of every later collection, and a larger
    young generation lets a batch's objects die by reference counting before they are ever
    scanned. Cycles are still collected.

    >>> before = gc.get_threshold()
    >>> steady_gc(); gc.get_threshold()[0] == GC_YOUNG_OBJECTS
    True
    >>> gc.get_freeze_count() > 0
    True
    >>> gc.unfreeze(); gc.set_threshold(*before)  # this example's process goes on as it was
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_OBJECTS, middle, old)


def cap_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Let glibc's malloc keep at most ``arenas`` arenas in this process; True if it took.

    Why: by default each thread that allocates may get an arena of its own (up to 8 per
    core), and memory freed in one is not reused by another. Every rowcast process has
    threads that allocate (kafka-python's network thread, librdkafka's, the metrics server,
    the worker's publisher): on a 300k-row COPY the learner peaked at 211 MB with glibc's
    default and 181 MB with 2 arenas, the sink at 132 and 77, at the same time to learn every
    label (issue 15: every process <= 200 MB). Call it before the process starts threads.
    An operator's own ``MALLOC_ARENA_MAX`` wins (glibc read it at start); elsewhere than
    glibc this does nothing.

    >>> cap_malloc_arenas() in (True, False)
    True
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        # the C library the interpreter already runs on: ctypes.util.find_library spawned
        # `/sbin/ldconfig -p` in every process at start (a stray child the worker's
        # supervision test once took for the faust child)
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not glibc
        return False
