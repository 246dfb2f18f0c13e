"""A malformed connection string never echoes its fragments, password included, in the CLI,
a process's log or the dashboard's ``/api/state`` (issue #16, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from rowcast.ops.dashboard import Dashboard

SECRET = "Sup3rS3cretPw"
MALFORMED = [
    # libpq quotes the word it could not parse: a password with a space in it
    f"host=127.0.0.1 port=1 user=app password=ab {SECRET}",
    # ...or the value of an option it could not read
    f"postgresql://app:{SECRET}@127.0.0.1:{SECRET}/rowcast",
    f"host=127.0.0.1 password='{SECRET}",
]


def run(settings, dsn: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env(), "ROWCAST_POSTGRES_DSN": dsn}
    return subprocess.run([sys.executable, "-m", "rowcast", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("dsn", MALFORMED)
def test_the_cli_and_a_process_say_one_line_without_the_password(settings, dsn):
    for args in (("deployments",), ("source",)):
        done = run(settings, dsn, *args)
        out = done.stdout + done.stderr
        assert done.returncode == 2, out
        assert SECRET not in out and "ab " + SECRET not in out, out
        assert "Traceback" not in out
        assert "ROWCAST_POSTGRES_DSN" in out


@pytest.mark.parametrize("dsn", MALFORMED)
def test_the_dashboard_state_does_not_echo_the_password(settings, dsn):
    board = Dashboard(settings.model_copy(update={"postgres_dsn": SecretStr(dsn)}),
                      sample_every_s=0.05)
    try:
        board.sample_once()  # fails on the connection string
        state = board.state()
    finally:
        board.server.server_close()
        board.monitor.close()
    assert state["error"]
    assert SECRET not in state["error"], state["error"]
