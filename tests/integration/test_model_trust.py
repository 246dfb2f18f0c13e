"""What a worker accepts from the models topic: only records signed, as a whole, with the
installation's key, and only the models of the deployments it serves are loaded (issue #16,
items 1 and 8)."""

from __future__ import annotations

import dataclasses
import urllib.request

import orjson
import pytest
from prometheus_client import REGISTRY

from rowcast.connectors.kafka_clients import ensure_topics, make_producer
from rowcast.connectors.model_topic import ensure_models_topic
from rowcast.core.model_record import ModelRecord
from rowcast.models.catalog import get_model
from rowcast.models.deployment import Deployment, Feature
from rowcast.models.serving import ServingSet
from rowcast.models.snapshot import dump_snapshot, signing_key
from rowcast.ops.pipeline import Pipeline
from rowcast.streams.model_feed import ModelFeed
from tests.helpers.cli import rowcast_cli
from tests.helpers.kafka_reading import drain
from tests.helpers.learning import fast, learned
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until


def deployment(name: str) -> Deployment:
    return Deployment(name, "public", f"t_{name}", "y", (Feature("x", "number"),),
                      "linear_regression", ("id",), "number", 1, None, 1)


def refused(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value("rowcast_snapshots_refused_total",
                                     {"deployment": name, "reason": reason}) or 0.0


def trained_snapshot(key: bytes) -> bytes:
    model = get_model("linear_regression").build()
    for i in range(20):
        model.learn_one({"x": float(i)}, 2.0 * i)
    return dump_snapshot(model, key)


def test_a_genuine_snapshot_replayed_as_another_deployment_or_a_forged_version_is_refused(
        settings):
    key = signing_key(settings)
    alpha, beta = deployment("alpha"), deployment("beta")
    ensure_models_topic(settings)
    ensure_topics(settings, [settings.dlq_topic])
    genuine = ModelRecord("alpha", alpha.generation, 3, 20, trained_snapshot(key))
    value = genuine.encode(key)
    header, _, snapshot = value.partition(b"\n")
    forged_version = orjson.dumps({**orjson.loads(header), "version": 2**31}) + b"\n" + snapshot
    renamed = orjson.dumps({**orjson.loads(header), "deployment": "beta"}) + b"\n" + snapshot
    producer = make_producer(settings)
    for k, v in ((b"alpha", value), (b"beta", value), (b"beta", renamed),
                 (b"alpha", forged_version), (b"beta#pin", renamed)):
        producer.send(settings.models_topic, key=k, value=v, partition=0).get(30)
    producer.close()
    before = refused("beta", "signature"), refused("alpha", "signature")

    feed = ModelFeed(settings, key)
    try:
        feed.serve(ServingSet.fresh([alpha, beta], feed.lookup))
        feed.catch_up()
        assert feed.lookup(alpha) is not None and feed.lookup(alpha)[0] == 3
        assert feed.lookup(beta) is None  # nothing genuine was ever published for beta
    finally:
        feed.consumer.close()
    assert refused("beta", "signature") - before[0] == 3
    assert refused("alpha", "signature") - before[1] == 1  # the forged version
    letters = [orjson.loads(r.value) for r in drain(settings, settings.dlq_topic, 1)]
    assert sum(1 for le in letters if le["stage"] == "model_feed") == 4


def test_a_worker_loads_only_what_it_serves_and_a_tombstone_forgets_it(settings):
    key = signing_key(settings)
    alpha, other = deployment("alpha"), deployment("other")
    ensure_models_topic(settings)
    producer = make_producer(settings)
    for d in (alpha, other):
        record = ModelRecord(d.name, d.generation, 1, 20, trained_snapshot(key))
        producer.send(settings.models_topic, key=record.kafka_key(), value=record.encode(key),
                      partition=0).get(30)
    producer.close()
    feed = ModelFeed(settings, key)
    try:
        feed.serve(ServingSet.fresh([alpha], feed.lookup))
        feed.catch_up()
        assert {name for name, _ in feed._loaded} == {"alpha"}  # "other" verified, not unpickled
        assert set(feed.latest) == {"alpha", "other"}
        producer = make_producer(settings)
        producer.send(settings.models_topic, key=b"other", value=None, partition=0).get(30)
        producer.close()
        feed.catch_up()
        assert set(feed.latest) == {"alpha"}
        assert dataclasses.is_dataclass(feed.latest["alpha"])
    finally:
        feed.consumer.close()


@pytest.mark.timeout(240)
def test_a_worker_that_cannot_verify_snapshots_is_an_error_in_status(settings, pg_conn, tmp_path):
    """Processes with different snapshot keys (say, started from different folders before the
    key had one home): the worker refuses every version and keeps serving version 0 — which
    ``rowcast status`` (and the dashboard's state) must say, not hide."""
    settings = fast(settings)
    table = deployed_xy_table(settings, pg_conn, "unverified", "unverified")
    other_key = settings.model_copy(update={"snapshot_key_file": tmp_path / "other.key"})
    with Pipeline(settings, tmp_path / "a", names=("source", "learner", "sink")) as main, \
            Pipeline(other_key, tmp_path / "b", names=("worker",)) as worker:
        insert_xy(pg_conn, table, range(1, 30))
        wait_until(lambda: learned(pg_conn, "unverified") > 0, timeout_s=90,
                   message=lambda: main.log_tail("learner"))

        def failed() -> dict | None:
            done = rowcast_cli(settings, "status", "--json", "--samples", "1")
            doc = orjson.loads(done.stdout)
            return next(d["failed"] for d in doc["deployments"] if d["name"] == "unverified")

        state = wait_until(failed, timeout_s=60, message=lambda: worker.log_tail("worker"))
        assert state["reason"] == "snapshot_refused"
        assert "ROWCAST_SNAPSHOT_KEY" in state["error"]
        screen = rowcast_cli(settings, "status", "--samples", "1").stdout
        assert "ERROR unverified: workers cannot verify its model snapshots" in screen
        page = urllib.request.urlopen(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics",
                                      timeout=10).read().decode()
        assert 'rowcast_snapshots_refused_total{deployment="unverified",reason="signature"}' \
            in page
