"""Every port a running pipeline listens on is one we meant to open (issue #16, item 4): the four
``/metrics`` endpoints on loopback and nothing else — faust's own web server stays off unless
asked for — and beyond loopback ``/metrics`` requires the token."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pydantic import SecretStr

from rowcast.core import metrics
from rowcast.core.errors import ConfigError
from rowcast.ops.pipeline import Pipeline
from tests.helpers.tables import deployed_xy_table, insert_xy
from tests.helpers.waiting import wait_until


def _session_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # the process group: the supervisor and its children
                pids.append(int(entry.name))
    return pids


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _listening() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state on this machine."""
    out = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = cols[1].split(":")
            if width == 8:
                addr = ".".join(str(int(addr_hex[i:i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = "::1" if addr_hex.endswith("01000000") and set(addr_hex[:24]) == {"0"} \
                    else addr_hex
            out[cols[9]] = (addr, int(port_hex, 16))
    return out


@pytest.mark.timeout(240)
def test_a_running_pipeline_listens_only_on_its_metrics_ports_on_loopback(settings, pg_conn,
                                                                            tmp_path):
    table = deployed_xy_table(settings, pg_conn, "ports", "ports")
    with Pipeline(settings, tmp_path) as pipeline:
        insert_xy(pg_conn, table, range(1, 6))
        wait_until(lambda: pg_conn.execute("SELECT count(*) FROM rowcast.predictions "
                                           "WHERE deployment = 'ports'").fetchone()[0] == 5,
                   timeout_s=90, message=lambda: pipeline.log_tail("worker"))
        listening = _listening()
        opened = {}
        for name, proc in pipeline.procs.items():
            for pid in _session_pids(proc.pid):
                for inode in _socket_inodes(pid) & listening.keys():
                    opened[(name, listening[inode][1])] = listening[inode][0]
    expected = {("source", settings.source_metrics_port), ("worker", settings.worker_metrics_port),
                ("learner", settings.learner_metrics_port), ("sink", settings.sink_metrics_port)}
    assert set(opened) == expected, opened
    assert set(opened.values()) == {"127.0.0.1"}
    assert ("worker", settings.worker_web_port) not in opened  # faust's web server is off


def test_metrics_beyond_loopback_need_the_token_or_an_explicit_opt_out(settings):
    open_settings = settings.model_copy(update={"bind_host": "0.0.0.0"})
    with pytest.raises(ConfigError, match="ROWCAST_DASHBOARD_TOKEN"):
        metrics.serve(settings.source_metrics_port, open_settings, "source")

    guarded = open_settings.model_copy(update={"dashboard_token": SecretStr("t0ken-" + "x" * 20)})
    server = metrics.serve(settings.source_metrics_port, guarded, "source")
    try:
        url = f"http://127.0.0.1:{settings.source_metrics_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer " + "t0ken-" + "x" * 20})
        with urllib.request.urlopen(request, timeout=5) as r:
            assert b"rowcast_" in r.read()
    finally:
        server.shutdown()
        server.server_close()

    opted_out = open_settings.model_copy(update={"metrics_without_token": True})
    server = metrics.serve(settings.sink_metrics_port, opted_out, "sink")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.sink_metrics_port}/metrics",
                                    timeout=5) as r:
            assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()
