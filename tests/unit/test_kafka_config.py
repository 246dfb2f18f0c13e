"""The broker configuration rowcast writes (pure rendering, no broker needed)."""

from pathlib import Path

from rowcast.devstack.kafka import render_pom, render_server_properties


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
