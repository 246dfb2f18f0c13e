"""The broker configuration rowcast writes (pure rendering, no broker needed)."""

from pathlib import Path

from rowcast.ops.devstack.kafka import render_pom, render_server_properties


def test_server_properties_are_single_node_kraft_on_loopback() -> None:
    text = render_server_properties(data_dir=Path("/d"), host="127.0.0.1", port=9, controller_port=10)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:10"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9,CONTROLLER://127.0.0.1:10"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["log.dirs"] == "/d/logs"


def test_pom_pins_the_broker_version() -> None:
    assert "<artifactId>kafka_2.13</artifactId>\n      <version>3.9.1</version>" in render_pom("3.9.1")


def test_security_settings_reach_kafka_python_and_faust(tmp_path: Path) -> None:
    import faust

    from rowcast.core.settings import Settings
    from rowcast.streams.app import _credentials

    sasl = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                    kafka_sasl_username="u", kafka_sasl_password="p", _env_file=None)
    config = sasl.kafka_client_config()
    assert (config["security_protocol"], config["sasl_mechanism"],
            config["sasl_plain_username"], config["sasl_plain_password"]) == (
        "SASL_PLAINTEXT", "PLAIN", "u", "p")
    credentials = _credentials(sasl)
    assert isinstance(credentials, faust.SASLCredentials) and credentials.ssl_context is None

    import ssl
    import subprocess

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=rowcast-test"],
                   check=True, capture_output=True)
    tls = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=cert, kafka_ssl_certfile=cert,
                   kafka_ssl_keyfile=key, _env_file=None)
    config = tls.kafka_client_config()
    assert (config["ssl_cafile"], config["ssl_certfile"], config["ssl_keyfile"]) == (
        str(cert), str(cert), str(key))
    credentials = _credentials(tls)
    assert isinstance(credentials, faust.SSLCredentials)
    assert isinstance(credentials.context, ssl.SSLContext)
    sasl_ssl = tls.model_copy(update={"kafka_security_protocol": "SASL_SSL",
                                      "kafka_sasl_mechanism": "PLAIN",
                                      "kafka_sasl_password": sasl.kafka_sasl_password})
    assert _credentials(sasl_ssl).ssl_context is not None


def test_mutual_tls_listener_demands_client_certificates() -> None:
    text = render_server_properties(data_dir=Path("/d"), host="127.0.0.1", port=9,
                                    controller_port=10, ssl_port=11, ssl_keystore=Path("/k.p12"),
                                    ssl_password="pw", mtls_port=12,
                                    mtls_truststore=Path("/t.p12"))
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["listeners"].endswith(",SSL://127.0.0.1:11,MTLS://127.0.0.1:12")
    assert props["listener.security.protocol.map"].endswith(",SSL:SSL,MTLS:SSL")
    assert props["listener.name.mtls.ssl.client.auth"] == "required"
    assert props["listener.name.mtls.ssl.truststore.location"] == "/t.p12"
    assert "listener.name.ssl.ssl.client.auth" not in props  # the plain TLS listener does not


def test_every_client_retries_a_lost_broker_within_seconds() -> None:
    from rowcast.core.settings import Settings

    config = Settings(_env_file=None).kafka_client_config()
    assert config["reconnect_backoff_max_ms"] == 2000  # not kafka-python's 30 s


def test_cluster_nodes_share_the_quorum_and_require_two_in_sync_replicas() -> None:
    voters = "1@127.0.0.1:10,2@127.0.0.1:20,3@127.0.0.1:30"
    text = render_server_properties(data_dir=Path("/d"), host="127.0.0.1", port=19,
                                    controller_port=20, node_id=2, voters=voters, replication=3)
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert (props["node.id"], props["controller.quorum.voters"]) == ("2", voters)
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"


def test_cluster_form_gives_every_node_its_ports_and_one_bootstrap_list(tmp_path: Path) -> None:
    from rowcast.ops.devstack.kafka import KafkaCluster

    cluster = KafkaCluster(tmp_path, [1, 3, 5], [2, 4, 6])
    assert cluster.bootstrap == "127.0.0.1:1,127.0.0.1:3,127.0.0.1:5"
    assert [s.node_id for s in cluster.servers] == [1, 2, 3]
    assert {s.voters for s in cluster.servers} == {"1@127.0.0.1:2,2@127.0.0.1:4,3@127.0.0.1:6"}
    assert not list(tmp_path.iterdir())  # nothing is written before the cluster starts


def test_topics_defer_replication_to_the_cluster_unless_the_operator_says() -> None:
    import pytest
    from pydantic import ValidationError

    from rowcast.connectors.kafka_clients import topic_spec
    from rowcast.core.settings import Settings

    default = topic_spec(Settings(_env_file=None), compacted=True, partitions=1)
    assert default == {"num_partitions": 1, "replication_factor": -1,
                       "configs": {"cleanup.policy": "compact"}}
    chosen = topic_spec(Settings(topic_replication_factor=3, topic_min_insync_replicas=2,
                                 _env_file=None))
    assert (chosen["replication_factor"], chosen["configs"]) == (3, {"min.insync.replicas": "2"})
    with pytest.raises(ValidationError):
        Settings(topic_replication_factor=0, _env_file=None)


def test_faust_declares_its_topics_with_the_resolved_replication(monkeypatch, tmp_path) -> None:
    """aiokafka cannot send -1, so faust gets the number the cluster resolves it to."""
    from rowcast.core.settings import Settings
    from rowcast.streams import app as app_module

    monkeypatch.setattr(app_module, "resolved_replication_factor", lambda settings: 3)
    app = app_module.create_app(Settings(state_dir=tmp_path, _env_file=None))
    assert app.conf.topic_replication_factor == 3  # tables' changelogs use it too


def test_no_replication_factor_is_hard_coded() -> None:
    """Every replication count comes from the settings or the cluster (the issue's grep)."""
    import re

    root = Path(__file__).resolve().parents[2]
    pattern = re.compile(r"replication_factor\W{0,3}\s*[:=]\s*[0-9]")
    hard_coded = [f"{path.relative_to(root)}:{n}" for folder in ("connectors", "streams", "ops")
                  for path in (root / folder).rglob("*.py")
                  for n, line in enumerate(path.read_text().splitlines(), 1)
                  if pattern.search(line)]
    assert hard_coded == []


def test_status_names_topics_laid_out_otherwise_and_deploy_warns_on_thin_durability() -> None:
    from rowcast.connectors.kafka_clients import TopicLayout, layout_problems, thin_durability
    from rowcast.ops.status_screen import render

    layouts = [TopicLayout("p.models", 1, 1), TopicLayout("p.dlq", 3, 2)]
    problems = layout_problems(layouts, replicas=3, min_insync=2)
    assert problems == ["topic p.models: 1 replica(s), expected 3, min.insync.replicas 1, "
                        "expected 2"]
    screen = render({"deployments": [], "slot": None, "stages": [], "topic_layout": problems,
                     "predictions": {"total": 0, "per_second": 0.0},
                     "latency_ms": {"p50": None, "p95": None, "p99": None}})
    assert "TOPIC LAYOUT: 1 topic(s)" in screen and "  topic p.models: 1 replica(s)" in screen
    thin = [TopicLayout("p.labels.x", 3, 1), TopicLayout("p.dlq", 3, 2)]
    warning = thin_durability(thin, brokers=3)
    assert warning is not None and "\n" not in warning and "p.labels.x" in warning
    assert thin_durability(thin, brokers=1) is None  # one broker cannot do better
    assert thin_durability(thin[1:], brokers=3) is None


# what Kafka 3.9.1 logged when its controller port was taken (the JVM then exits with code 1)
BIND_FAILURE_LOG = Path(__file__).parents[1] / "data" / "kafka_bind_failure.log"


def test_a_broker_that_exits_is_explained_by_its_log_in_one_line() -> None:
    from rowcast.ops.devstack.kafka import exit_reason

    assert exit_reason(BIND_FAILURE_LOG.read_text()) == \
        "Socket server failed to bind to 127.0.0.1:37755: Address already in use."
    assert exit_reason("[x] INFO starting\n") is None
    assert exit_reason("") is None


def test_a_taken_port_is_found_before_the_broker_starts(tmp_path) -> None:
    import socket

    from rowcast.core.errors import DevStackError
    from rowcast.ops.devstack.kafka import KafkaServer
    from rowcast.ops.devstack.process import free_port

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = KafkaServer(tmp_path, free_port(), port)
        try:
            server.check_ports()
        except DevStackError as err:
            message = str(err)
        else:
            raise AssertionError("a listening controller port went unnoticed")
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "controller" in message
    KafkaServer(tmp_path, free_port(), free_port()).check_ports()  # both free: no error


def test_the_reason_is_read_from_the_fatal_error_alone() -> None:
    """A later shutdown-time exception (with a number in it) is not the reason."""
    from rowcast.ops.devstack.kafka import exit_reason

    log = (BIND_FAILURE_LOG.read_text().replace("Caused by: java.net.BindException", "X")
           + "[2026-11-30 12:22:01,000] INFO shutting down (kafka.Kafka)\n"
           "org.apache.kafka.common.errors.TimeoutException: Timed out after 5000 ms\n")
    assert exit_reason(log) == \
        "Socket server failed to bind to 127.0.0.1:37755: Address already in use."


def test_a_cluster_refused_for_a_taken_port_starts_no_node(tmp_path) -> None:
    """Node 2's port taken: node 1 was launched first and left running on its old ports."""
    import socket

    from rowcast.core.errors import DevStackError
    from rowcast.ops.devstack.kafka import KafkaCluster
    from rowcast.ops.devstack.process import free_port

    with socket.create_server(("127.0.0.1", 0)) as taken:
        cluster = KafkaCluster(tmp_path, [free_port(), taken.getsockname()[1], free_port()],
                               [free_port(), free_port(), free_port()])
        launched = []
        for server in cluster.servers:
            server.launch = lambda s=server: launched.append(s.node_id)  # no JVM in a unit test
        try:
            cluster.start()
        except DevStackError as err:
            assert "broker port" in str(err)
        else:
            raise AssertionError("a taken port went unnoticed")
    assert launched == []


def test_an_operator_command_gives_up_on_an_unreachable_broker_after_ten_seconds(
        monkeypatch) -> None:
    """`rowcast deploy` against a broker refusing every connection said so after 32 s
    (kafka-python's 30 s bootstrap): its check now gives up after CHECK_BOOTSTRAP_MS."""
    from rowcast.connectors import kafka_clients
    from rowcast.core.settings import Settings

    made: list[dict] = []

    class Admin:
        def __init__(self, **config) -> None:
            made.append(config)

        def list_topics(self) -> list[str]:
            return []

        def close(self) -> None:
            pass

    monkeypatch.setattr(kafka_clients, "KafkaAdminClient", Admin)
    kafka_clients.check_kafka(Settings(_env_file=None))
    assert made[0]["bootstrap_timeout_ms"] == kafka_clients.CHECK_BOOTSTRAP_MS == 10_000
    assert made[0]["bootstrap_servers"] == ["127.0.0.1:19092"]
