"""Every rowcast entry point but the worker's child stays light: it imports neither faust nor
river (nor, through river, numpy and scipy), nor Kafka clients it does not use. Each costs every
process that loads it tens of MB of RSS (issue 15: every process <= 200 MB); importing the
garbage-collector policy from the scorer module once took the source from 65 to 146 MB, and the
worker's supervisor held ~90 MB of its child's imports for nothing; psycopg2, loaded by every
process that imported the source module, took the learner from ~190 to 199-200 MB."""

import pytest

from tests.helpers.modules import heavy_modules_after


@pytest.mark.parametrize("imports, allowed", [
    # the source and the sink (kafka-python and librdkafka are theirs)
    ("rowcast.streams.processes, rowcast.streams.memory_policy, rowcast.connectors.cdc_source, "
     "rowcast.connectors.pg_sink", {"kafka", "confluent_kafka"}),
    # psycopg2 (the replication protocol, ~4 MB) only once the streaming source starts
    ("rowcast.streams.processes, rowcast.streams.learner",
     {"kafka", "confluent_kafka", "river", "numpy", "scipy"}),
    # the CLI and the worker's supervisor
    ("rowcast.ops.cli, rowcast.ops.cli.processes, rowcast.streams.worker", set()),
])
def test_an_entry_point_imports_no_heavy_module(imports, allowed):
    assert set(heavy_modules_after(imports)) - allowed == set()


def test_the_check_sees_a_heavy_import():
    assert "faust" in heavy_modules_after("rowcast.streams.scorer")
