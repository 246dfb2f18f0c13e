"""Small process helpers the dev stack services share: wait for a condition, stop by pid file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from rowcast.core.errors import DevStackError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and side-by-side stacks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str,
             interval_s: float = 0.1, log: Path | None = None) -> None:
    """Poll ``condition`` until it holds; on timeout raise with the log's tail to act on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise DevStackError(f"{what} did not happen within {timeout_s:.0f} s{tail}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(FileNotFoundError, IndexError):
        # a zombie (exited, not yet reaped) counts as gone
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM the process group, wait, then SIGKILL what is left."""
    terminate_all([pid], timeout_s)


def terminate_all(pids: list[int], timeout_s: float) -> None:
    """SIGTERM every process group at once, wait for all, then SIGKILL what is left.

    At once, because some stop only together: a KRaft node's controlled shutdown needs a
    quorum of controllers, so nodes stopped one after the other left the last one waiting for
    the others, SIGKILLed 30 s later (a 3-broker dev cluster took 31 s to stop, 6 at once)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
