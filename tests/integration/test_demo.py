"""`rowcast demo` as a newcomer and a service manager run it: it scores live rows, and a
SIGTERM or SIGHUP (a closed terminal, `kill`, `systemctl stop`) stops the pipeline and the dev
stack it started, as Ctrl-C does. It used to catch only Ctrl-C: a SIGTERM left the four rowcast
processes, Postgres and Kafka running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from rowcast.ops.devstack.process import free_port
from tests.helpers.waiting import wait_until


def _processes_of(state_dir: Path) -> list[int]:
    """Every live process started for this demo (they all inherit its ROWCAST_STATE_DIR)."""
    marker = f"ROWCAST_STATE_DIR={state_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0") \
                    and (entry / "stat").read_text().split(") ")[1][0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_the_demo_pipeline_and_its_stack(services_dir, signum) -> None:
    state = services_dir / f"demo-{uuid.uuid4().hex[:6]}"
    state.mkdir()
    env = {**os.environ, "ROWCAST_STATE_DIR": str(state),
           "ROWCAST_POSTGRES_DSN": f"postgresql://postgres@127.0.0.1:{free_port()}/rowcast",
           "ROWCAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           **{f"ROWCAST_{name.upper()}_PORT": str(free_port()) for name in (
               "kafka_controller", "worker_web", "source_metrics", "worker_metrics", "sink_metrics",
               "learner_metrics", "dashboard")}}
    out = state / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "rowcast", "demo", "--rows-per-second",
                                 "20"], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=state)
    try:
        # scored rows on screen: stack, pipeline and inserts are all running
        wait_until(lambda: demo.poll() is not None
                   or re.search(r"scored +[1-9]", out.read_text()),
                   timeout_s=240, message=lambda: out.read_text()[-3000:])
        assert demo.poll() is None, out.read_text()[-3000:]
        assert len(_processes_of(state)) >= 6  # demo, 4 rowcast processes, Postgres, Kafka
        demo.send_signal(signum)
        assert demo.wait(timeout=120) == 0, out.read_text()[-3000:]
        assert "stopping" in out.read_text()
        assert _processes_of(state) == [], out.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=120)
        for pid in _processes_of(state):
            os.kill(pid, signal.SIGKILL)
