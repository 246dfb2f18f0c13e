"""A worker's faust child never outlives its supervisor: no stray processes after a kill -9."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from rowcast.connectors.schema import init_database
from rowcast.ops.pipeline import Pipeline
from tests.helpers.waiting import wait_until


def children(pid: int) -> list[int]:
    """The faust children of a worker supervisor (not a short-lived helper it forks)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"--child" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except FileNotFoundError:
                pass
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("started", [False, True], ids=["while-starting", "running"])
def test_the_child_stops_when_its_supervisor_is_killed(settings, pg_conn, tmp_path, started):
    init_database(pg_conn, settings)
    pipeline = Pipeline(settings, tmp_path / "logs", ("worker",)).start()
    try:
        supervisor = pipeline.procs["worker"]
        child = wait_until(lambda: children(supervisor.pid), timeout_s=30)[0]
        if started:  # killed once the child runs its own code, or at once (during start-up)
            wait_until(lambda: "worker metrics on" in pipeline.log_tail("worker"), timeout_s=30)
        os.kill(supervisor.pid, signal.SIGKILL)  # the supervisor alone, as an OOM kill would
        supervisor.wait(timeout=10)
        wait_until(lambda: not alive(child), timeout_s=30,
                   message=lambda: Path(f"/proc/{child}/status").read_text())
    finally:
        pipeline.stop()
