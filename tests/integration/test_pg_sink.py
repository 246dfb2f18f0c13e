"""The sink against the real server and broker: batched idempotent upserts, offsets after commit."""

from __future__ import annotations

import random
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
from psycopg import pq

from rowcast.connectors import kafka_native
from rowcast.connectors.dead_letters import DeadLetterWriter
from rowcast.connectors.kafka_clients import ensure_topics, make_consumer, make_producer
from rowcast.connectors.pg_sink import PredictionSink, upsert
from rowcast.connectors.schema import init_database
from rowcast.core.prediction import PredictionRecord
from tests.helpers.kafka_reading import drain
from tests.helpers.waiting import wait_until


def record(key: int, score: float, lsn: int, version: int = 1) -> PredictionRecord:
    return PredictionRecord("dep", "linear_regression", version, "public", "t", {"id": key},
                            score, score, lsn, 1_700_000_000_000_000, 1_700_000_000_001_000)


def rows(conn) -> dict[int, tuple]:
    return {r[0]: r[1:] for r in conn.execute(
        "SELECT (pk->>'id')::int, score, model_version FROM rowcast.predictions "
        "WHERE deployment = 'dep'")}


def test_upsert_is_idempotent_and_never_goes_back(settings, pg_conn):
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    upsert(pg_conn, [record(1, 1.0, 100), record(2, 2.0, 100), record(1, 1.5, 200)])
    assert rows(pg_conn) == {1: (1.5, 1), 2: (2.0, 1)}  # latest LSN wins inside a batch
    upsert(pg_conn, [record(1, 9.0, 150), record(2, 2.0, 100)])  # older replay: no effect
    assert rows(pg_conn) == {1: (1.5, 1), 2: (2.0, 1)}
    upsert(pg_conn, [record(2, 3.0, 100, version=2)])  # same row, newer model version
    assert rows(pg_conn) == {1: (1.5, 1), 2: (3.0, 2)}


def pkey_probes(conn) -> int:
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT coalesce(idx_scan, 0) FROM pg_stat_user_indexes WHERE "
                        "schemaname = 'rowcast' AND indexrelname = 'predictions_pkey'").fetchone()[0]


def test_a_batch_of_new_rows_is_inserted_without_a_conflict_check_per_row(settings, pg_conn):
    """Most batches are new rows (inserts being scored): those go in with a plain INSERT, the
    upsert only when one row is stored already (or twice in the batch). The
    upsert's speculative insertion probed the primary key per row: 7.3-7.6 vs 4.4 µs of server
    CPU per prediction. The result is the same either way."""
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    before = pkey_probes(pg_conn)
    assert upsert(pg_conn, [record(k, float(k), 100) for k in range(1, 1001)]) is True
    probes = pkey_probes(pg_conn) - before
    assert probes < 10, f"{probes} primary-key probes for 1,000 new rows"
    assert len(rows(pg_conn)) == 1000
    # stored already: the plain INSERT fails and rolls back, the upsert writes the batch
    assert upsert(pg_conn, [record(1000, 5.0, 200), record(1001, 6.0, 200)]) is False
    assert rows(pg_conn)[1000] == (5.0, 1) and rows(pg_conn)[1001] == (6.0, 1)
    # told a batch probably meets stored rows: straight to the upsert
    assert upsert(pg_conn, [record(1002, 7.0, 200)], try_insert=False) is False
    assert rows(pg_conn)[1002] == (7.0, 1)


def client_messages(conn, write) -> list[str]:
    """The libpq messages ``write(conn)`` sends to the server (its round trips: one per Query)."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            write(conn)
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        return [line.split("\t")[2].strip() for line in trace if line.startswith("F\t")]


def test_a_batch_of_new_rows_is_four_round_trips_once_the_staging_table_exists(settings, pg_conn):
    """At a trickle the sink writes a small batch every few milliseconds, so its statements
    cost more than its rows: staging-table DDL and a savepoint around the plain INSERT were 7
    round trips (server 610, client 441 µs for 5 rows; 4 round trips: 417 and 258)."""
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    upsert(pg_conn, [record(1, 1.0, 100)])  # the connection's first batch may make the table
    sent = client_messages(pg_conn, lambda c: upsert(c, [record(k, 1.0, 100) for k in (2, 3)]))
    assert sent.count("Query") == 4, sent  # BEGIN, COPY, INSERT, COMMIT
    # a conflict still ends upserted, whatever it costs
    assert upsert(pg_conn, [record(3, 5.0, 200), record(4, 6.0, 200)]) is False
    assert rows(pg_conn)[3] == (5.0, 1) and rows(pg_conn)[4] == (6.0, 1)


def test_the_staging_table_is_made_again_on_a_connection_that_lost_it(settings, pg_conn):
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    upsert(pg_conn, [record(1, 1.0, 100)])
    pg_conn.execute("DISCARD TEMP")  # what a pooler's server reset does between clients
    upsert(pg_conn, [record(2, 2.0, 100)])
    assert sorted(rows(pg_conn)) == [1, 2]


def test_upsert_stores_every_field_exactly_whatever_the_text(settings, pg_conn):
    """The batch travels as COPY text: tabs, backslashes, newlines and quotes in names, keys
    and predictions come back unchanged; LSNs and microsecond times are exact."""
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment LIKE 'd%ep'")
    odd = 'a\tb\\c\nd\re "q" é \\N'
    lsn, commit_us, scored_us = 0x16B374D848, 1_700_000_000_123_457, -1_000_001
    r = PredictionRecord("d\tep", odd, 7, odd, odd, {"k": odd, "n": 1.5}, {"label": odd},
                         None, lsn, commit_us, scored_us)
    upsert(pg_conn, [r])
    row = pg_conn.execute(
        "SELECT deployment, source_schema, source_table, pk, prediction, score, model, "
        "model_version, source_lsn::text, source_committed_at, scored_at FROM rowcast.predictions "
        "WHERE deployment = %s", (r.deployment,)).fetchone()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    us = lambda t: (t - epoch) // timedelta(microseconds=1)  # noqa: E731
    assert row[:9] == ("d\tep", odd, odd, {"k": odd, "n": 1.5}, {"label": odd}, None, odd, 7,
                       "16/B374D848")
    assert (us(row[9]), us(row[10])) == (commit_us, scored_us)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = %s", (r.deployment,))


def test_sink_writes_batches_dead_letters_garbage_and_commits_after(settings, pg_conn):
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    topic = settings.predictions_topic("dep")
    ensure_topics(settings, [topic, settings.dlq_topic])
    producer = make_producer(settings)
    for i in range(1, 101):
        r = record(i, float(i), 1000 + i)
        producer.send(topic, key=r.key_bytes(), value=r.to_json())
    producer.send(topic, key=b"junk", value=b"{not json")
    producer.flush()

    consumer = kafka_native.make_consumer(settings, f"{settings.topic_prefix}-sink")
    sink = PredictionSink(settings, pg_conn, consumer,
                          DeadLetterWriter(producer, settings.dlq_topic))
    assert sink.refresh_subscription() and sink.subscribed == (topic,)
    assert not sink.refresh_subscription()  # unchanged: no rebalance
    wait_until(lambda: sink.poll_once() >= 0 and len(rows(pg_conn)) == 100, timeout_s=30,
               message=lambda: f"{len(rows(pg_conn))} of 100 predictions written")
    wait_until(lambda: sink.poll_once() == 0 and sink.dead_letters.count == 1, timeout_s=10)
    consumer.close()

    # offsets were committed: a new consumer in the group sees nothing left
    again = make_consumer(settings, f"{settings.topic_prefix}-sink")
    again.subscribe([topic])
    leftovers = []
    for _ in range(5):
        for batch in again.poll(timeout_ms=300).values():
            leftovers.extend(batch)
    again.close()
    assert leftovers == []

    letters = drain(settings, settings.dlq_topic, 1, timeout_s=20)
    letter = orjson.loads(letters[0].value)
    assert (letter["stage"], letter["reason"]) == ("sink", "bad_prediction")
    assert letter["value"]["data"] == "{not json" and letter["origin"]["topic"] == topic
    producer.close()


def test_a_prediction_postgres_cannot_store_is_dead_lettered_alone(settings, pg_conn):
    """A key too large for the primary key's index (2,800 characters of random hex is a valid
    source row, but ``index row size 2712 exceeds btree version 4 maximum 2704``) failed the
    whole batch, and the sink exited -- and again at each restart, on the same record: no
    deployment got predictions any more. Now the batch is written row by row, the row that
    cannot be stored goes to the dead-letter topic with PostgreSQL's reason, and the rest of
    the batch and what follows are written and committed."""
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    topic = settings.predictions_topic("dep")
    ensure_topics(settings, [topic, settings.dlq_topic])
    producer = make_producer(settings)
    huge = PredictionRecord("dep", "linear_regression", 1, "public", "t",
                            {"k": random.Random(1).randbytes(1400).hex()}, 1.0, 1.0, 500,
                            1_700_000_000_000_000, 1_700_000_000_001_000)
    batch = [record(i, float(i), 1000 + i) for i in range(1, 51)]
    for r in [*batch[:25], huge, *batch[25:]]:
        producer.send(topic, key=r.key_bytes(), value=r.to_json())
    producer.flush()

    consumer = kafka_native.make_consumer(settings, f"{settings.topic_prefix}-sink")
    sink = PredictionSink(settings, pg_conn, consumer,
                          DeadLetterWriter(producer, settings.dlq_topic))
    sink.refresh_subscription()
    wait_until(lambda: sink.poll_once() >= 0 and len(rows(pg_conn)) == 50
               and sink.dead_letters.count == 1, timeout_s=30,
               message=lambda: f"{len(rows(pg_conn))} of 50 predictions written")
    # then the next batch goes the fast way again
    producer.send(topic, key=record(99, 9.0, 2000).key_bytes(),
                  value=record(99, 9.0, 2000).to_json())
    producer.flush()
    wait_until(lambda: sink.poll_once() >= 0 and 99 in rows(pg_conn), timeout_s=30)
    sink.commit()
    consumer.close()

    letter = orjson.loads(drain(settings, settings.dlq_topic, 1, timeout_s=20)[0].value)
    assert (letter["stage"], letter["reason"]) == ("sink", "unstorable_prediction")
    assert "index row size" in letter["error"] and letter["origin"]["topic"] == topic
    assert orjson.loads(letter["value"]["data"])["key"] == huge.key
    producer.close()


def test_predictions_arriving_within_the_linger_are_one_transaction(settings, pg_conn):
    """The worker's producer sends a request per partition, so a round's predictions reach the
    sink as several fetches: those within ``sink_linger_ms`` of the first are written with it."""
    settings = settings.model_copy(update={"sink_linger_ms": 500.0, "topic_partitions": 4})
    init_database(pg_conn, settings)
    pg_conn.execute("DELETE FROM rowcast.predictions WHERE deployment = 'dep'")
    topic = settings.predictions_topic("dep")
    ensure_topics(settings, [topic, settings.dlq_topic])
    producer = make_producer(settings)
    consumer = kafka_native.make_consumer(settings, f"{settings.topic_prefix}-sink")
    sink = PredictionSink(settings, pg_conn, consumer,
                          DeadLetterWriter(producer, settings.dlq_topic))
    assert sink.refresh_subscription()
    wait_until(lambda: sink.poll_once() == 0 and len(consumer.assignment()) == 4, timeout_s=30)

    def the_rest() -> None:  # one request each, the first well before them
        for partition in (1, 2, 3):
            time.sleep(0.02)  # apart, as separate fetches are; not a wait for a condition
            r = record(partition, 1.0, 2000 + partition)
            producer.send(topic, key=r.key_bytes(), value=r.to_json(), partition=partition)
            producer.flush()

    first = record(10, 1.0, 2000)
    producer.send(topic, key=first.key_bytes(), value=first.to_json(), partition=0)
    producer.flush()
    later = threading.Thread(target=the_rest)
    later.start()
    written: list[int] = []
    wait_until(lambda: written.append(sink.poll_once()) or written[-1] > 0, timeout_s=20)
    later.join()
    assert written[-1] == 4, f"the first poll that wrote wrote {written[-1]} of 4"
    assert len(rows(pg_conn)) == 4
    consumer.close()
    producer.close()
