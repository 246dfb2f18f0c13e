"""The dev stack's services are real, configured as rowcast needs, and stop without leftovers."""

from __future__ import annotations

import dataclasses
import uuid

import psycopg
from kafka import KafkaConsumer, KafkaProducer

from rowcast.core.settings import Settings
from rowcast.ops.devstack.process import free_port, pid_alive, read_pid
from rowcast.ops.devstack.stack import DevStack


def test_postgres_runs_with_logical_decoding(pg_conn) -> None:
    assert pg_conn.execute("SHOW wal_level").fetchone()[0] == "logical"
    assert int(pg_conn.execute("SHOW max_replication_slots").fetchone()[0]) >= 10
    slot = f"probe_{uuid.uuid4().hex[:8]}"
    pg_conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    pg_conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_kafka_round_trip_and_group_commit(kafka_server) -> None:
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_server.bootstrap)
    producer.send(topic, b"hello").get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_server.bootstrap, group_id=topic,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    assert [m.value for m in consumer][:1] == [b"hello"]
    consumer.commit()
    consumer.close()


def test_dev_stack_up_and_down_leaves_no_process(services_dir) -> None:
    state = services_dir / f"stack-{uuid.uuid4().hex[:6]}"
    state.mkdir()
    state.chmod(0o755)
    settings = Settings(postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
                        kafka_bootstrap=f"127.0.0.1:{free_port()}", state_dir=state,
                        _env_file=None)
    stack = DevStack(settings)
    stack.up()
    stack.up()  # idempotent
    try:
        assert all(v.startswith("running") for v in stack.status().values())
        with psycopg.connect(stack.postgres.dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "rowcast"
        kafka_pid = read_pid(stack.kafka.pid_file)
        pg_pid = int((stack.postgres.data_dir / "postmaster.pid").read_text().split()[0])
    finally:
        stack.down()
    assert not pid_alive(kafka_pid) and not pid_alive(pg_pid)
    assert all(v == "stopped" for v in stack.status().values())


def test_the_broker_probe_ends_at_its_timeout_whatever_the_port_does(kafka_server) -> None:
    """`wait_ready` asks again until the broker answers: each ask must end. kafka-python 3.0.12's
    blocking calls have no deadline, and a probe during a broker restart blocked forever."""
    import socket
    import time

    listening = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    silent = dataclasses.replace(kafka_server, port=listening.getsockname()[1])
    refused = dataclasses.replace(kafka_server, port=free_port())
    try:
        assert kafka_server._accepts_clients(timeout_s=5.0)
        for probe in (silent, refused):
            started = time.monotonic()
            assert not probe._accepts_clients(timeout_s=1.0)
            assert time.monotonic() - started < 3.0  # its own timeout, not a client's default
    finally:
        listening.close()
