"""The sink's offset commits: what is in Postgres gets committed, a refused commit is retried
even when no new records come, a group that never settles is joined again, and partitions that
moved away are let go, and partitions revoked by a rebalance get what is in Postgres
committed. A stand-in for confluent-kafka's Consumer (unit level; the real broker is exercised by
the integration and fault tiers)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from rowcast.connectors import pg_sink
from rowcast.connectors.pg_sink import PredictionSink
from rowcast.core.settings import Settings

TP, OTHER = ("p.predictions.d", 0), ("p.predictions.d", 1)


class StandInConsumer:
    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.owned = {TP, OTHER}
        self.committed: list[dict[tuple[str, int], int]] = []
        self.joins: list[list[str]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(*tp) for tp in sorted(self.owned)]

    def consume(self, num_messages: int, timeout: float) -> list:
        self.waits = [*getattr(self, "waits", []), ("consume", timeout)]
        return []

    def poll(self, timeout: float):
        self.waits = [*getattr(self, "waits", []), ("poll", timeout)]
        return None

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False  # offsets are committed once, in order, before moving on
        if self.refusals:
            self.refusals -= 1
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        self.committed.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def unsubscribe(self) -> None:
        self.owned = set()

    def subscribe(self, topics: list[str], on_revoke=None) -> None:
        self.joins.append(topics)


def sink_with(consumer: StandInConsumer) -> PredictionSink:
    sink = PredictionSink(Settings(kafka_session_timeout_s=10, _env_file=None), conn=None,
                          consumer=consumer, dead_letters=None)
    sink.subscribed = ("p.predictions.d",)
    return sink


def test_a_refused_commit_is_retried_without_new_records(monkeypatch) -> None:
    monkeypatch.setattr(pg_sink, "COMMIT_RETRY_S", 0.0)
    consumer = StandInConsumer(refusals=2)
    sink = sink_with(consumer)
    sink.uncommitted = {TP: 10, OTHER: 4}
    assert sink.commit() is False and sink.uncommitted == {TP: 10, OTHER: 4}
    assert sink.poll_once() == 0 and consumer.committed == []  # refused again
    assert sink.poll_once() == 0  # an idle poll carries the retry
    assert consumer.committed == [{TP: 10, OTHER: 4}]
    assert sink.uncommitted == {} and consumer.joins == []
    assert sink.poll_once() == 0 and len(consumer.committed) == 1  # nothing left to commit


def test_a_group_that_never_settles_is_joined_again(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(pg_sink.time, "monotonic", lambda: clock[0])
    consumer = StandInConsumer(refusals=10**6)
    sink = sink_with(consumer)
    sink.uncommitted = {TP: 10}
    assert sink.commit() is False
    clock[0] += 19.0  # within two session timeouts: keep retrying
    sink.poll_once()
    assert consumer.joins == []
    clock[0] += 2.0
    sink.poll_once()
    assert consumer.joins == [["p.predictions.d"]]  # left and joined again
    assert sink.uncommitted == {}  # read again from the committed offsets; the upsert ignores


def test_partitions_that_moved_away_are_not_committed() -> None:
    consumer = StandInConsumer(refusals=0)
    sink = sink_with(consumer)
    sink.uncommitted = {TP: 10, OTHER: 4}
    consumer.owned = {TP}  # OTHER went to another sink: its owner replays, the upsert ignores
    assert sink.commit() is True
    assert consumer.committed == [{TP: 10}]
    assert sink.uncommitted == {}


def test_revoked_partitions_get_what_is_in_postgres_committed() -> None:
    consumer = StandInConsumer(refusals=0)
    sink = sink_with(consumer)
    sink.uncommitted = {TP: 10, OTHER: 4}
    sink._revoked(consumer, [TopicPartition(*OTHER)])  # inside consume(): the batch is written
    assert consumer.committed == [{OTHER: 4}] and sink.uncommitted == {TP: 10}


def test_an_error_other_than_a_refusal_is_not_swallowed() -> None:
    consumer = StandInConsumer(refusals=0)
    consumer.commit = lambda offsets, asynchronous: (_ for _ in ()).throw(
        KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    sink = sink_with(consumer)
    sink.uncommitted = {TP: 10}
    try:
        sink.commit()
    except KafkaException as exc:
        assert exc.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    else:
        raise AssertionError("an authorization failure must stop the sink")


def test_the_sink_takes_what_has_arrived_without_waiting_for_a_full_batch():
    """librdkafka's consume(n, timeout) waits until n records or the timeout: at 2,000 rows/s
    and batches of 2,000 that was the whole 50 ms poll timeout on every batch (the largest part
    of commit->prediction latency). The sink takes what is there, and waits only for a first
    record when nothing is."""
    consumer = StandInConsumer(refusals=0)
    sink = sink_with(consumer)
    sink.poll_once()
    assert consumer.waits[0] == ("consume", 0)
    assert all(timeout == 0 for kind, timeout in consumer.waits if kind == "consume")


def test_offsets_are_committed_at_most_once_per_interval_and_at_stop(monkeypatch) -> None:
    """A synchronous commit after every batch was ~200 broker round trips a second at 2,000
    rows/s (a write to ``__consumer_offsets`` each, on the same cores): what is in Postgres is
    committed at most every ``sink_commit_interval_s``, by a batch or an idle poll, and at stop.
    A kill replays at most that interval's records, which the upsert ignores."""
    clock = [1000.0]
    monkeypatch.setattr(pg_sink.time, "monotonic", lambda: clock[0])
    consumer = StandInConsumer(refusals=0)
    sink = PredictionSink(Settings(sink_commit_interval_s=1.0, _env_file=None), conn=None,
                          consumer=consumer, dead_letters=None)
    sink.subscribed = ("p.predictions.d",)
    arriving: list[list[int]] = [[1], [2], [], [3], []]
    monkeypatch.setattr(sink, "_take", lambda: arriving.pop(0))

    def write(batch: list[int]) -> int:
        sink.uncommitted[TP] = batch[-1] + 1
        return len(batch)
    monkeypatch.setattr(sink, "_write", write)
    monkeypatch.setattr(pg_sink, "_failed", lambda m: False)
    sink.poll_once()
    assert consumer.committed == [{TP: 2}]  # the first batch in a while: committed at once
    clock[0] += 0.3
    sink.poll_once()
    sink.poll_once()  # idle, but within the interval
    assert consumer.committed == [{TP: 2}] and sink.uncommitted == {TP: 3}
    clock[0] += 0.8
    sink.poll_once()
    assert consumer.committed == [{TP: 2}, {TP: 4}]
    clock[0] += 0.1
    arriving[:] = [[]]
    sink.uncommitted[TP] = 5
    stop = type("Stop", (), {"n": 0, "is_set": lambda self: (self.__setattr__("n", self.n + 1)
                                                            or self.n > 1)})()
    monkeypatch.setattr(sink, "refresh_subscription", lambda: False)
    monkeypatch.setattr(pg_sink.position_history, "follow_predictions", lambda conn: None)
    sink.run(stop)  # one idle round within the interval, then stop: what is left is committed
    assert consumer.committed[-1] == {TP: 5} and sink.uncommitted == {}


def test_a_zero_interval_commits_after_every_batch(monkeypatch) -> None:
    consumer = StandInConsumer(refusals=0)
    sink = PredictionSink(Settings(sink_commit_interval_s=0, _env_file=None), conn=None,
                          consumer=consumer, dead_letters=None)
    sink.subscribed = ("p.predictions.d",)
    arriving: list[list[int]] = [[1], [2]]
    monkeypatch.setattr(sink, "_take", lambda: arriving.pop(0))
    monkeypatch.setattr(sink, "_write", lambda b: sink.uncommitted.update({TP: b[-1] + 1}) or 1)
    monkeypatch.setattr(pg_sink, "_failed", lambda m: False)
    sink.poll_once()
    sink.poll_once()
    assert consumer.committed == [{TP: 2}, {TP: 3}]


def test_after_a_batch_met_stored_rows_the_upsert_runs_directly_for_a_while(monkeypatch):
    """Updates or replays make the plain INSERT fail in its savepoint: trying it first on every
    batch would write each twice, so for ``UPSERT_AFTER_CONFLICT_S`` batches are upserted."""
    clock = [1000.0]
    monkeypatch.setattr(pg_sink.time, "monotonic", lambda: clock[0])
    tries: list[bool] = []
    stored = [True]  # whether the batch meets a stored row

    def upsert(conn, records, try_insert=True):
        tries.append(try_insert)
        return try_insert and not stored[0]
    monkeypatch.setattr(pg_sink, "upsert", upsert)
    monkeypatch.setattr(pg_sink, "observe_latencies", lambda *a: None)
    sink = sink_with(StandInConsumer(refusals=0))
    batch = [type("R", (), {"deployment": "d"})()]
    sink._upsert(batch, [None])  # tried, met a stored row
    clock[0] += 5
    sink._upsert(batch, [None])
    clock[0] += 5
    stored[0] = False
    sink._upsert(batch, [None])  # the window is over: tried again, and it works
    clock[0] += 1
    sink._upsert(batch, [None])
    assert tries == [True, False, True, True]
