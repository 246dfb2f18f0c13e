"""Run the ``rowcast`` command as a user would: a child process with the settings in its environment."""

from __future__ import annotations

import os
import subprocess
import sys


def deploy_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "rowcast", "deploy", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def rowcast_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **settings.to_env()}
    return subprocess.run([sys.executable, "-m", "rowcast", *args], env=env,
                          capture_output=True, text=True, timeout=120)
