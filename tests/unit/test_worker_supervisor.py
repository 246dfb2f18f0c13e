"""``rowcast worker``'s supervisor starts its faust child with a malloc cap (that it stays light
is checked with the other entry points in ``test_light_processes.py``).

Issue 15 (every rowcast process <= 200 MB): the supervisor only starts and restarts the child,
so it imports neither faust nor river (numpy, scipy) nor the Kafka clients: they cost it ~90 MB
of RSS for nothing (~143 MB, now ~54). The child gets ``MALLOC_ARENA_MAX=2`` unless the
operator set it: glibc would otherwise give each of its allocating threads an arena of its own.
"""

from __future__ import annotations

import signal

import pytest

from rowcast.core.settings import Settings
from rowcast.streams import worker
from rowcast.streams.scorer import RETRY_EXIT


def test_the_child_asks_for_a_restart_with_the_code_the_supervisor_restarts_on():
    assert worker.RELOAD_EXIT == RETRY_EXIT


def test_the_child_environment_caps_malloc_arenas_unless_the_operator_chose():
    env = worker.child_environment({"PATH": "/bin"}, 4321)
    assert env == {"PATH": "/bin", worker.SUPERVISOR_ENV: "4321", "MALLOC_ARENA_MAX": "2"}
    chosen = worker.child_environment({"MALLOC_ARENA_MAX": "8"}, 1)
    assert chosen["MALLOC_ARENA_MAX"] == "8"


def test_the_supervisor_starts_the_child_with_that_environment(monkeypatch: pytest.MonkeyPatch):
    started: list[dict[str, str]] = []

    class Child:
        def __init__(self, args: list[str], env: dict[str, str]) -> None:
            assert "--child" in args
            started.append(env)

        def wait(self) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(worker.subprocess, "Popen", Child)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(SystemExit) as stopped:
            worker.run_worker(Settings(_env_file=None))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert stopped.value.code == 0
    [env] = started
    assert env["MALLOC_ARENA_MAX"] == "2" and env[worker.SUPERVISOR_ENV].isdigit()


def test_capping_malloc_arenas_starts_no_process(monkeypatch: pytest.MonkeyPatch):
    """Every rowcast process caps its arenas at start: ctypes.util.find_library ran
    `/sbin/ldconfig -p` for it, a stray child of each (the supervision test once took it for
    the worker's faust child)."""
    import sys

    from rowcast.streams.memory_policy import cap_malloc_arenas

    spawned: list[object] = []
    watching = [True]

    def hook(event: str, args: tuple) -> None:
        if watching[0] and event in ("subprocess.Popen", "os.posix_spawn", "os.fork"):
            spawned.append(args)

    sys.addaudithook(hook)  # an audit hook cannot be removed: it goes quiet below
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    try:
        assert cap_malloc_arenas() is True  # glibc here
    finally:
        watching[0] = False
    assert spawned == []
