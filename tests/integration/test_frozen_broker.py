"""A broker that stops answering (frozen: SIGSTOP, as a GC pause or a hung disk would) must not
freeze what operators look at during the incident: ``rowcast status`` and the dashboard say the
broker did not answer, within seconds, and show the rest."""

from __future__ import annotations

import os
import signal
import time

from rowcast.ops.devstack.process import read_pid
from rowcast.ops.monitor import KAFKA_ANSWER_S, Monitor
from tests.helpers.tables import deployed_xy_table
from tests.helpers.waiting import wait_until


def test_status_says_the_broker_did_not_answer_within_seconds(settings, pg_conn, kafka_server):
    deployed_xy_table(settings, pg_conn, "frozen", "frozen")
    monitor = Monitor(settings)
    try:
        def judged() -> bool:  # connected, and the groups' coordinators known
            return all(s["verdict"] != "UNKNOWN" for s in monitor.sample()["stages"])

        wait_until(judged, timeout_s=60)
        broker = read_pid(kafka_server.pid_file)
        os.killpg(broker, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = monitor.sample()
            took = time.monotonic() - started
        finally:
            os.killpg(broker, signal.SIGCONT)
        # every Kafka question waits at most KAFKA_ANSWER_S, and they are asked together
        assert took < 3 * KAFKA_ANSWER_S, took
        assert frozen["stages"] and all(s["verdict"] == "UNKNOWN" for s in frozen["stages"])
        assert all(f"did not answer within {KAFKA_ANSWER_S:.0f} s" in s["error"]
                   for s in frozen["stages"]), frozen["stages"]
        assert [d["name"] for d in frozen["deployments"]] == ["frozen"]  # PostgreSQL's part
        wait_until(judged, timeout_s=60)  # the broker is back: judged again
    finally:
        monitor.close()
