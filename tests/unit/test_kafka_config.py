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
