"""Unreachable services give one plain line naming the setting to check: no traceback, and
never the password from the DSN."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from rowcast.core.settings import Settings, invalid_settings_line
from rowcast.ops.devstack.process import free_port


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rowcast", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_unreachable_postgres_is_one_clear_line_without_the_password() -> None:
    done = run_cli("deployments",
                   ROWCAST_POSTGRES_DSN=f"postgresql://app:pw-N0t-3ch0ed@127.0.0.1:{free_port()}/x")
    assert done.returncode == 2
    assert done.stderr.startswith("rowcast: cannot connect to PostgreSQL (ROWCAST_POSTGRES_DSN)")
    assert "pw-N0t-3ch0ed" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_kafka_fails_deploy_before_anything_is_written() -> None:
    # Postgres is never reached: deploy checks Kafka first, so no half-made deployment is left
    done = run_cli("deploy", "d", "--table", "t", "--target", "y",
                   ROWCAST_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
                   ROWCAST_KAFKA_SASL_PASSWORD="k-N0t-3ch0ed",
                   ROWCAST_POSTGRES_DSN=f"postgresql://app@127.0.0.1:{free_port()}/x")
    assert done.returncode == 2
    assert "did not let rowcast in" in done.stderr and "ROWCAST_KAFKA_BOOTSTRAP" in done.stderr
    assert "cannot connect to PostgreSQL" not in done.stderr
    assert "k-N0t-3ch0ed" not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_a_malformed_setting_is_one_line_naming_it_for_every_kind_of_command() -> None:
    # a long-running process reads its settings before anything else; an operator command
    # reads them inside the command: both gave a pydantic traceback (Rich-boxed for the latter)
    for command in ("source", "status", "deployments"):
        done = run_cli(command, ROWCAST_PROCESS_NICE="abc")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith("rowcast: setting ROWCAST_PROCESS_NICE"), lines[0]
        assert "'abc'" in lines[0], lines[0]


def test_a_malformed_secret_setting_is_named_but_its_value_never_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(postgres_dsn=31415926535, stall_exit_s=-1, _env_file=None)
    line = invalid_settings_line(caught.value)
    assert "31415926535" not in line
    assert line.startswith("setting ROWCAST_POSTGRES_DSN: "), line
    assert "; setting ROWCAST_STALL_EXIT_S: " in line and "(got -1)" in line, line
