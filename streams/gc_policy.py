"""How rowcast's long-running processes set CPython's cyclic garbage collector.

Its own module (standard library only) so the source and the sink can use it without importing
the scorer's faust and river modules (they would cost each of them ~80 MB of RSS).
"""

from __future__ import annotations

import gc

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
