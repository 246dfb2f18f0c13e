"""A process stuck in a call that never returns exits so that it is started again, and loses
nothing (rowcast.core.liveness). The stuck call here is the sink's upsert waiting for a lock
another session holds; in the fault tier it was a client library's call during a broker
restart. Either way the process was alive, idle and silent before."""

from __future__ import annotations

import psycopg

from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.schema import init_database
from rowcast.core.liveness import STALLED_EXIT
from rowcast.core.prediction import PredictionRecord
from rowcast.ops.pipeline import Pipeline
from tests.helpers.tables import deployed_xy_table
from tests.helpers.waiting import wait_until


def record(key: int) -> PredictionRecord:
    return PredictionRecord("stalled", "linear_regression", 1, "public", "t", {"id": key},
                            float(key), float(key), 1000 + key, 1_700_000_000_000_000,
                            1_700_000_000_001_000)


def predicted(conn: psycopg.Connection) -> set[int]:
    return {r[0] for r in conn.execute("SELECT (pk->>'id')::int FROM rowcast.predictions "
                                       "WHERE deployment = 'stalled'")}


def test_a_sink_stuck_in_a_call_exits_with_where_and_its_restart_loses_nothing(
        settings, pg_conn, pg_server, tmp_path):
    settings = settings.model_copy(update={"stall_exit_s": 3.0, "deployment_refresh_s": 0.5})
    init_database(pg_conn, settings)
    topic = settings.predictions_topic("stalled")
    ensure_topics(settings, [topic])
    producer = make_producer(settings)

    def send(key: int) -> None:
        r = record(key)
        producer.send(topic, key=r.key_bytes(), value=r.to_json())
        producer.flush()

    with Pipeline(settings, tmp_path / "logs", names=("sink",)) as pipeline:
        send(1)
        wait_until(lambda: predicted(pg_conn) == {1}, timeout_s=60,
                   message=lambda: pipeline.log_tail("sink"))
        with psycopg.connect(pg_server.dsn) as holder:  # e.g. a migration holding the table
            holder.execute("LOCK TABLE rowcast.predictions IN ACCESS EXCLUSIVE MODE")
            send(2)
            sink = pipeline.procs["sink"]
            wait_until(lambda: sink.poll() is not None, timeout_s=60,
                       message=lambda: pipeline.log_tail("sink"))
            assert sink.returncode == STALLED_EXIT
            log = pipeline.log_tail("sink", 400)
            assert "ERROR rowcast.core.liveness: sink: its loop has not come round for " in log
            assert "called from _stage_and_run (pg_sink.py:" in log  # where: the library call, and ours
            assert "thread MainThread" in log and 'File "' in log  # every stack, for the issue
            holder.rollback()  # the lock goes; the service manager starts the sink again
        assert pipeline.restart_dead() == ["sink"]
        wait_until(lambda: predicted(pg_conn) == {1, 2}, timeout_s=60,
                   message=lambda: pipeline.log_tail("sink"))
    producer.close()


def test_a_worker_whose_event_loop_stops_coming_round_is_replaced_by_its_supervisor(
        settings, pg_conn, pg_server, tmp_path):
    """The worker beats from faust's refresh timer: a refresh that never returns (here: waiting
    for a lock on rowcast.deployments) stops the beats, so the faust child exits with 75 and
    the worker's supervisor starts a fresh one."""
    settings = settings.model_copy(update={"stall_exit_s": 3.0, "deployment_refresh_s": 0.5})
    deployed_xy_table(settings, pg_conn, "stalled_worker", "stalled")
    with Pipeline(settings, tmp_path / "logs", names=("worker",)) as pipeline:
        wait_until(lambda: "scoring 1 deployment(s)" in pipeline.log_tail("worker"),
                   timeout_s=60, message=lambda: pipeline.log_tail("worker"))
        with psycopg.connect(pg_server.dsn) as holder:
            holder.execute("LOCK TABLE rowcast.deployments IN ACCESS EXCLUSIVE MODE")
            wait_until(lambda: "restarting the scoring worker" in pipeline.log_tail("worker", 10**6),
                       timeout_s=60, message=lambda: pipeline.log_tail("worker"))
            log = pipeline.log_tail("worker", 400)
            assert "worker: its loop has not come round for " in log  # (faust formats the line)
            holder.rollback()
        assert pipeline.procs["worker"].poll() is None  # the supervisor itself stays up
        wait_until(lambda: pipeline.log_tail("worker", 10**6).count("scoring 1 deployment(s)") >= 2,
                   timeout_s=60, message=lambda: pipeline.log_tail("worker"))


def test_a_worker_stuck_while_starting_is_replaced_by_its_supervisor(
        settings, pg_conn, pg_server, tmp_path):
    """Startup is watched like the loop: a child that never reached faust (it sat silent for
    good once, while its supervisor waited; kafka-python 3.0.12's blocking calls made during
    startup have no deadline) exits with 75 and a fresh one is started. The stuck call here is
    the first read of rowcast.deployments, waiting for a lock another session holds."""
    settings = settings.model_copy(update={"stall_exit_s": 3.0, "deployment_refresh_s": 0.5})
    deployed_xy_table(settings, pg_conn, "stuck_start", "stuckstart")
    with psycopg.connect(pg_server.dsn) as holder:
        holder.execute("LOCK TABLE rowcast.deployments IN ACCESS EXCLUSIVE MODE")
        with Pipeline(settings, tmp_path / "logs", names=("worker",)) as pipeline:
            wait_until(lambda: "restarting the scoring worker" in pipeline.log_tail("worker", 10**6),
                       timeout_s=60, message=lambda: pipeline.log_tail("worker"))
            assert "worker: its loop has not come round for " in pipeline.log_tail("worker", 400)
            assert "scoring 1 deployment(s)" not in pipeline.log_tail("worker", 10**6)
            holder.rollback()
            wait_until(lambda: "scoring 1 deployment(s)" in pipeline.log_tail("worker", 10**6),
                       timeout_s=60, message=lambda: pipeline.log_tail("worker"))
            assert pipeline.procs["worker"].poll() is None  # the supervisor itself stays up
