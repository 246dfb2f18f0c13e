"""Run rowcast's processes (source, worker, learner, sink) as children, with one set of settings.

Used by the demo and the end-to-end tests; in production each runs under its own supervisor
(systemd, Kubernetes, docker compose). Output goes to log files, never to pipes that could fill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rowcast.core.settings import Settings

PROCESSES = ("source", "worker", "learner", "sink")


class Pipeline:
    """Start, inspect and stop the rowcast processes for one settings object."""

    def __init__(self, settings: Settings, log_dir: Path, names: tuple[str, ...] = PROCESSES):
        self.settings = settings
        self.log_dir = log_dir
        self.names = names
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> Pipeline:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            self.start_one(name)
        return self

    def start_one(self, name: str) -> subprocess.Popen:
        """Start one process; ``worker#2`` is a second worker, ``learner#2`` a standby learner
        (each with its own ports: the configured ones plus the index)."""
        command, _, index = name.partition("#")
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        if index:
            offset = int(index)
            if command == "worker":
                env["ROWCAST_WORKER_WEB_PORT"] = str(self.settings.worker_web_port + offset)
            metrics_port = getattr(self.settings, f"{command}_metrics_port", 0)
            if metrics_port:
                env[f"ROWCAST_{command.upper()}_METRICS_PORT"] = str(metrics_port + offset)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "rowcast", command], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def restart_dead(self) -> list[str]:
        """Start again whatever exited: what systemd's Restart=always or compose's
        ``restart: unless-stopped`` do in production (a process whose database or broker went
        away exits; its successor resumes from its durable position)."""
        dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
        for name in dead:
            self.start_one(name)
        return dead

    def kill(self, name: str) -> None:
        """kill -9 of the process and its children (a worker's faust child too): fault injection."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is its pid
        proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                proc.wait(timeout=5)
        for proc in self.procs.values():  # children of a stopped supervisor must not linger
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
