"""Each long-running process gives the broker a client id saying which it is, so an operator
reading the broker's group listings, request metrics or quotas tells them apart."""

from __future__ import annotations

import uuid

import pytest
from kafka.errors import KafkaError

from rowcast.connectors.kafka_clients import make_admin
from rowcast.ops.pipeline import Pipeline
from tests.helpers.tables import sql_deployed
from tests.helpers.waiting import wait_until


def client_ids(settings, group: str) -> set[str]:
    admin = make_admin(settings)
    try:
        described = admin.describe_groups([group]).get(group) or {}
    except KafkaError:  # not made yet: its coordinator is not there
        return set()
    finally:
        admin.close()
    return {m["client_id"] for m in described.get("members") or []}


@pytest.mark.timeout(240)
def test_the_broker_sees_each_process_by_its_role(settings, pg_conn, tmp_path):
    settings = settings.model_copy(update={"kafka_client_id": "shop-rowcast"})
    table = f"public.ids_{uuid.uuid4().hex[:6]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, x float8, y float8)")
    sql_deployed(settings, pg_conn, "ids", table)
    expected = {settings.scorer_group: "shop-rowcast-worker",
                settings.learner_group: "shop-rowcast-learner",
                settings.sink_group: "shop-rowcast-sink"}
    with Pipeline(settings, tmp_path / "logs") as pipeline:
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 1, 1)")
        seen = lambda: {g: client_ids(settings, g) for g in expected}  # noqa: E731
        wait_until(lambda: seen() == {g: {c} for g, c in expected.items()}, timeout_s=90,
                   message=lambda: f"{seen()}\n{pipeline.log_tail('worker')}")
