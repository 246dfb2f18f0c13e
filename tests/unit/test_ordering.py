"""The commit-order merge: whatever the interleaving of partitions, label events come out in
commit order, nothing is lost or released early, memory and waiting are bounded, and a
checkpoint resumes it exactly."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rowcast.core.label_events import LabelEvent
from rowcast.models.ordering import CommitOrderMerge


def event(stream: str, commit: int, n: int) -> LabelEvent:
    return LabelEvent("labelled", "d", "g", {"id": n}, stream, (commit, commit + n, 1), 0,
                      {"x": float(n)}, float(n))


def interleaved(n_events: int, n_streams: int, seed: int):
    """What one labels partition receives: per stream in order (events, then the watermarks
    the source wrote after them), streams interleaved at random, as workers forward them."""
    rng = random.Random(seed)
    streams = [f"t:{i}" for i in range(n_streams)]
    per_stream: dict[str, list] = {s: [] for s in streams}
    commit = 0
    for n in range(n_events):
        commit += rng.randint(1, 3)  # several changes may share a commit
        s = rng.choice(streams)
        per_stream[s].append(("event", event(s, commit, n)))
        if rng.random() < 0.2:  # the source acknowledged up to here: a watermark everywhere
            for t in streams:
                per_stream[t].append(("watermark", t, commit))
    for t in streams:  # the heartbeat at the end
        per_stream[t].append(("watermark", t, commit + 1))
    out, cursors = [], {s: 0 for s in streams}
    while any(cursors[s] < len(per_stream[s]) for s in streams):
        s = rng.choice([s for s in streams if cursors[s] < len(per_stream[s])])
        out.append(per_stream[s][cursors[s]])
        cursors[s] += 1
    return streams, out


def drive(merge: CommitOrderMerge, items) -> list[LabelEvent]:
    released = []
    for item in items:
        if item[0] == "event":
            merge.add(item[1], now=0.0)
        else:
            merge.watermark(item[1], item[2])
        released += merge.release(now=0.0)
    return released


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 6), st.integers(0, 10**6))
def test_any_interleaving_comes_out_in_commit_order_and_complete(n, n_streams, seed):
    streams, items = interleaved(n, n_streams, seed)
    merge = CommitOrderMerge(streams)
    released = drive(merge, items)
    assert [e.order for e in released] == sorted(e.order for e in released)
    assert sorted(e.key["id"] for e in released) == list(range(n))
    assert merge.forced == 0 and len(merge) == 0


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 200), st.integers(1, 4), st.integers(0, 10**6), st.data())
def test_a_checkpoint_anywhere_resumes_the_merge_exactly(n, n_streams, seed, data):
    streams, items = interleaved(n, n_streams, seed)
    cut = data.draw(st.integers(0, len(items)))
    first = CommitOrderMerge(streams)
    before = drive(first, items[:cut])
    resumed = CommitOrderMerge.from_dict(first.to_dict())
    after = drive(resumed, items[cut:])
    whole = drive(CommitOrderMerge(streams), items)
    assert [e.key["id"] for e in before + after] == [e.key["id"] for e in whole]


def test_nothing_is_released_before_every_stream_is_known_complete():
    merge = CommitOrderMerge(["t:0", "t:1", "t:2"])
    merge.add(event("t:0", 5, 1), now=0.0)
    merge.watermark("t:0", 10)
    merge.watermark("t:1", 10)
    assert merge.release(now=1.0) == []  # t:2 may still hold an earlier commit
    merge.watermark("t:2", 4)
    assert merge.release(now=1.0) == []
    merge.watermark("t:2", 5)
    assert [e.key["id"] for e in merge.release(now=1.0)] == [1]


def test_waiting_and_memory_are_bounded():
    merge = CommitOrderMerge(["t:0", "t:1"], max_buffered=3, max_wait_s=10.0)
    for i in range(5):
        merge.add(event("t:0", 10 + i, i), now=0.0)
    assert [e.key["id"] for e in merge.release(now=0.0)] == [0, 1]  # over the bound: oldest
    assert merge.forced == 2 and len(merge) == 3
    assert [e.key["id"] for e in merge.release(now=11.0)] == [2, 3, 4]  # waited too long
    assert merge.forced == 5


def test_snapshot_reads_and_unpositioned_events_pass_at_once():
    merge = CommitOrderMerge(["t:0"])
    read = LabelEvent("scored", "d", "g", {"id": 1}, "t:0:r", (7, 7, 1), 0, {"x": 1.0})
    unpositioned = LabelEvent("labelled", "d", "g", {"id": 2}, "t:0", (0, 9, 0), 0, {"x": 1.0}, 1.0)
    merge.add(read)
    merge.add(unpositioned)
    assert merge.release() == [read, unpositioned]


def test_the_learner_learns_in_commit_order_and_its_checkpoint_keeps_the_merge():
    from river import evaluate, metrics

    from rowcast.models.catalog import get_model
    from rowcast.models.deployment import Deployment, Feature
    from rowcast.models.learning import DeploymentLearner, LearnerState, MemoryPending

    d = Deployment("ts", "public", "t", "y", (Feature("x", "number"),), "linear_regression", ("id",))
    rows = [({"x": float(i % 7)}, 3.0 * (i % 7) + i * 0.1) for i in range(60)]
    streams, items = interleaved(60, 3, seed=5)  # positions and an interleaving of 3 partitions
    by_n = {item[1].key["id"]: item[1] for item in items if item[0] == "event"}
    learner = DeploymentLearner.fresh(d, MemoryPending())
    learner.state.merge.expect(streams)
    half = len(items) // 2
    for part in (items[:half], items[half:]):
        events = []
        for item in part:
            if item[0] == "event":
                n = item[1].key["id"]
                x, y = rows[n]
                events.append(LabelEvent("labelled", "ts", d.generation, {"id": n}, item[1].stream,
                                         by_n[n].order, 1, x, y))
            else:
                events.append(LabelEvent("watermark", "ts", d.generation, {}, item[1],
                                         (item[2], 0, 0), 1))
        learner.apply(events)
        # a checkpoint between the halves: state through JSON, as the learner stores it
        learner.state = LearnerState.from_json(learner.state.to_json())
    assert learner.model.samples_learned == 60
    expected = evaluate.progressive_val_score(rows, get_model("linear_regression").build(),
                                              metrics.MAE()).get()
    assert learner.progressive.values()["MAE"] == expected


def test_a_big_transaction_is_released_as_it_arrives_not_after_its_watermark():
    """A 1M-row COPY is one transaction: its watermark comes only once all of it is published.
    Events are released as soon as every partition has delivered a later one (per partition,
    positions only grow), so the learner neither waits for the end nor buffers the whole load."""
    from rowcast.core.label_events import LabelEvent
    from rowcast.models.ordering import CommitOrderMerge

    def ev(stream, lsn):
        return LabelEvent("labelled", "d", "g", {"id": lsn}, stream, (1000, lsn, lsn), 0,
                          {"x": 1.0}, 1.0)

    merge = CommitOrderMerge(["t:0", "t:1"])
    merge.add_many([ev("t:0", 1), ev("t:0", 3), ev("t:1", 2)], now=0.0)
    assert [e.key["id"] for e in merge.release(now=0.0)] == [1, 2]  # 3: t:1 may still send <3
    merge.add_many([ev("t:1", 4), ev("t:1", 6), ev("t:0", 5)], now=0.0)
    assert [e.key["id"] for e in merge.release(now=0.0)] == [3, 4, 5]
    assert len(merge) == 1 and merge.forced == 0
    merge.watermark("t:0", 1000)
    merge.watermark("t:1", 1000)
    assert [e.key["id"] for e in merge.release(now=0.0)] == [6]


def test_a_replayed_event_waits_for_its_watermark_not_for_later_events():
    """A worker that restarts re-reads its partition: an event older than the stream's latest
    is a replay, released only once a watermark passes it (never ahead of its original)."""
    from rowcast.core.label_events import LabelEvent
    from rowcast.models.ordering import CommitOrderMerge

    def ev(stream, lsn, key):
        return LabelEvent("labelled", "d", "g", {"id": key}, stream, (lsn, lsn, 1), 0,
                          {"x": 1.0}, 1.0)

    merge = CommitOrderMerge(["t:0", "t:1"])
    merge.add_many([ev("t:0", 10, 1), ev("t:0", 30, 3), ev("t:1", 40, 4)], now=0.0)
    assert [e.key["id"] for e in merge.release(now=0.0)] == [1, 3]
    merge.add_many([ev("t:0", 20, 2)], now=0.0)  # replayed after 30: late
    assert merge.release(now=0.0) == []
    merge.watermark("t:0", 25)
    merge.watermark("t:1", 25)
    assert [e.key["id"] for e in merge.release(now=0.0)] == [2]


def test_a_checkpoint_written_before_the_batch_encoding_still_resumes():
    """Checkpoints kept the buffered events as one JSON document each before issue 15's
    batch encoding; a learner restored from one resumes the merge as the writer left it."""
    streams, items = interleaved(120, 3, seed=11)
    cut = len(items) // 2
    first = CommitOrderMerge(streams)
    before = drive(first, items[:cut])
    assert len(first) > 0  # something is buffered at the cut
    old = {"watermarks": dict(first.watermarks), "expected": sorted(first.expected),
           "forced": first.forced,
           "buffered": [h[3].to_json().decode() for h in first._sorted()]}
    after = drive(CommitOrderMerge.from_dict(old), items[cut:])
    whole = drive(CommitOrderMerge(streams), items)
    assert [e.key["id"] for e in before + after] == [e.key["id"] for e in whole]
    assert "buffered" not in first.to_dict() and "buffered_batch" in first.to_dict()


def test_the_checkpointed_buffer_keeps_every_field_of_its_events():
    from rowcast.core.label_events import Served

    merge = CommitOrderMerge(["t:0", "t:1", "t:2"])  # t:2 silent: everything waits
    events = [
        LabelEvent("labelled", "d", "g", {"id": 1, "k": "ü"}, "t:0", (5, 6, 1), 7, {"x": 1.5,
                   "c": "Lyon"}, 2.5, Served(3, 2.0, None)),
        LabelEvent("scored", "d", "g", {"id": 2}, "t:0", (5, 7, 2), 8, {"x": -0.0}, None,
                   Served(3, True, ((False, 0.25), (True, 0.75))), was={"id": 9}),
        LabelEvent("label", "d", "g", {"id": 3}, "t:1", (6, 9, 1), 9, None, "gold"),
        LabelEvent("deleted", "d", "g", {"id": 4}, "t:1", (6, 10, 2), 10),
    ]
    for e in events:
        merge.add(e, now=0.0)
    assert merge.release(now=0.0) == []  # nothing passed every stream's watermark
    resumed = CommitOrderMerge.from_dict(merge.to_dict())
    for stream in ("t:0", "t:1", "t:2"):
        resumed.watermark(stream, 99)
    assert resumed.release(now=0.0) == events


class OneHeap:
    """The merge as it was before the per-stream queues: every held event in one heap, popped
    while the head may go. The reference the k-way merge must equal, release by release."""

    def __init__(self, merge: CommitOrderMerge) -> None:
        self.m, self.heap, self.seq, self.last = merge, [], 0, {}

    def add(self, e: LabelEvent, now: float) -> None:
        seen = self.last.get(e.stream)
        late = seen is not None and e.order < seen
        self.heap.append((e.order, self.seq, now, e, late))
        self.seq += 1
        if not late:
            self.last[e.stream] = e.order

    def release(self, now: float) -> list[LabelEvent]:
        import heapq

        m, heap, low = self.m, self.heap, self.m.low_watermark
        heapq.heapify(heap)
        floor = (0, 0, 0)
        bound = min(max(self.last.get(s, floor), (m.watermarks.get(s, 0), 2**63, 2**63))
                    for s in m.expected)
        out = []
        while heap:
            head = heap[0]
            if not (head[0][0] <= low or (not head[4] and head[0] <= bound)
                    or len(heap) > m.max_buffered or now - head[2] > m.max_wait_s):
                break
            out.append(heapq.heappop(heap)[3])
        return out


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 400), st.integers(1, 6), st.integers(0, 10**6), st.integers(2, 60))
def test_the_k_way_merge_releases_what_one_heap_of_everything_released(n, n_streams, seed,
                                                                          bound):
    """Same events, same order, at every release: with replays (a stream re-sending older
    events), the memory bound hit, events waiting past max_wait_s, and watermarks."""
    rng = random.Random(seed)
    streams, items = interleaved(n, n_streams, seed)
    merge = CommitOrderMerge(streams, max_buffered=bound, max_wait_s=5.0)
    reference = OneHeap(CommitOrderMerge(streams, max_buffered=bound, max_wait_s=5.0))
    reference.m.watermarks = merge.watermarks  # one watermark table, read by both
    sent: list[LabelEvent] = []
    now = 0.0
    for item in items:
        now += rng.choice([0.0, 0.0, 0.5, 2.0])
        if item[0] == "event":
            batch = [item[1]]
            if sent and rng.random() < 0.1:  # a worker re-reads its partition: a replay
                batch.append(rng.choice(sent))
            sent += batch
            merge.add_many(batch, now=now)
            for e in batch:
                reference.add(e, now)
        else:
            merge.watermark(item[1], item[2])
        if rng.random() < 0.7:
            assert merge.release(now=now) == reference.release(now)
            assert len(merge) == len(reference.heap)
    assert merge.release(now=now) == reference.release(now)
    assert len(merge) == len(reference.heap) == 0
