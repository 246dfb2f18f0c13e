"""What a learned row costs the learner in memory until its checkpoint: its key's own bytes.

orjson (3.12 and later) hands back ``dumps`` output in a buffer of at least 4 KiB whatever the
length (``sys.getsizeof`` shows only the length; Home Assistant trims the orjson output it
caches for the same reason, home-assistant/core#181240). The learner keeps every key it saw
since its last checkpoint (the pending maps' cache, 5,000 labels and more), so its RSS rose by
~45 MB when labels began and ~30 MB more when it caught up with a backlog: the 226-273 MB
peaks of issue 15's runs (~166 MB after the copy).
"""

from __future__ import annotations

import gc
import tracemalloc

from test_learning_rules import D, ev

from rowcast.core.keys import key_id
from rowcast.core.label_events import LabelEvent
from rowcast.core.prediction import PredictionRecord, PredictionTombstone
from rowcast.models.learning import DeploymentLearner, MemoryPending

ROWS = 2000


def traced_growth(action) -> float:
    """Bytes per row still allocated after ``action`` ran (what it keeps, not what it churned)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = action()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept is not None
    return grown / ROWS


def test_a_learned_row_costs_the_learner_well_under_a_kilobyte_until_its_checkpoint() -> None:
    learner = DeploymentLearner.fresh(D, MemoryPending())
    learner.apply([ev("labelled", i, 1.0) for i in range(10)])  # the model's weights exist
    events = [ev("labelled", i, float(i)) for i in range(100, 100 + ROWS)]

    def learn() -> DeploymentLearner:
        assert learner.apply(events) == ROWS
        return learner

    # ~300 bytes of entries and counters per row; a 4 KiB key buffer would be 4,400
    assert traced_growth(learn) < 1024


def test_key_ids_are_sized_to_their_text() -> None:
    key = {"tenant": "héllo", "id": 12345}
    assert traced_growth(lambda: [key_id(key) for _ in range(ROWS)]) < 128
    event = LabelEvent("labelled", "d", "g", key, "t:0", (1, 1, 1), 1)
    assert traced_growth(lambda: [event.key_bytes() for _ in range(ROWS)]) < 128
    prediction = PredictionRecord("d", "m", 1, "s", "t", key, 1.5, None, 0, 0, 0)
    assert traced_growth(lambda: [prediction.key_bytes() for _ in range(ROWS)]) < 128
    tombstone = PredictionTombstone("d", key)
    assert traced_growth(lambda: [tombstone.key_bytes() for _ in range(ROWS)]) < 128


def test_a_key_id_is_the_sorted_json_key_whatever_the_column_order() -> None:
    assert key_id({"b": 1, "a": "x"}) == key_id({"a": "x", "b": 1}) == b'{"a":"x","b":1}'
