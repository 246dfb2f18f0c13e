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
                        kafka_controller_port=free_port(), _env_file=None)
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


def test_a_taken_controller_port_is_named_and_another_can_be_set(services_dir) -> None:
    """The dev broker's KRaft controller listens one port above the broker unless
    ``ROWCAST_KAFKA_CONTROLLER_PORT`` says otherwise: a user whose next port is taken gets one
    line naming it and the setting, and the setting works (CI once lost a run to a client
    connection holding the port above a free one)."""
    import socket

    import pytest

    from rowcast.core.errors import DevStackError

    for _ in range(100):
        broker = free_port()
        try:
            blocker = socket.create_server(("127.0.0.1", broker + 1))
            break
        except OSError:
            continue
    else:
        raise AssertionError("no free port with a free port above it")
    state = services_dir / f"stack-{uuid.uuid4().hex[:6]}"
    state.mkdir()
    state.chmod(0o755)
    common = dict(postgres_dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
                  kafka_bootstrap=f"127.0.0.1:{broker}", state_dir=state, _env_file=None)
    with blocker:
        stack = DevStack(Settings(**common))
        try:
            with pytest.raises(DevStackError) as refused:
                stack.up()
            message = str(refused.value)
            assert "\n" not in message
            assert f"127.0.0.1:{broker + 1}" in message
            assert "ROWCAST_KAFKA_CONTROLLER_PORT" in message
            assert not stack.kafka.is_running()

            chosen = DevStack(Settings(**common, kafka_controller_port=free_port()))
            chosen.up()
            assert chosen.kafka._accepts_clients(timeout_s=10.0)
        finally:
            stack.down()
    assert all(v == "stopped" for v in stack.status().values())


def test_a_broker_that_exits_at_start_says_why_in_one_line(services_dir) -> None:
    """A port taken between the check and the JVM's bind (or any other fatal start): the error
    carries the broker's own reason, not only the log's path."""
    import socket

    import pytest

    from rowcast.core.errors import DevStackError
    from rowcast.ops.devstack.kafka import KafkaServer

    class Unchecked(KafkaServer):
        def check_ports(self) -> None:  # the race: the port is taken after the check
            pass

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = Unchecked(services_dir / f"exits-{uuid.uuid4().hex[:6]}", free_port(), port)
        try:
            with pytest.raises(DevStackError) as exited:
                server.start(timeout_s=60)
        finally:
            server.stop()
    message = str(exited.value)
    assert "\n" not in message
    assert message.startswith("Kafka exited (code 1): Socket server failed to bind to "
                              f"127.0.0.1:{port}: Address already in use; see ")
