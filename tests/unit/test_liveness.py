"""The stall watchdog: a loop that stops coming round exits the process, saying where it was."""

from __future__ import annotations

import logging
import threading

from rowcast.core import liveness
from rowcast.core.liveness import STALLED_EXIT, Watchdog
from tests.helpers.waiting import wait_until


def stuck_in_a_client_call(release: threading.Event) -> None:
    release.wait()  # a call that does not return (kafka-python 3.0.12's net.run, say)


def test_a_loop_stuck_in_a_call_exits_the_process_naming_the_call(caplog) -> None:
    exits: list[int] = []
    dumped = threading.Event()
    release = threading.Event()
    made = threading.Event()
    box: dict[str, Watchdog] = {}

    def loop() -> None:
        with Watchdog("sink", limit_s=0.2, exit=exits.append, dump=dumped.set) as dog:
            box["dog"] = dog
            made.set()
            liveness.beat()
            stuck_in_a_client_call(release)

    with caplog.at_level(logging.ERROR, logger="rowcast.core.liveness"):
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            wait_until(lambda: exits, timeout_s=10, interval_s=0.02)
        finally:
            release.set()
            thread.join(5)
    assert exits == [STALLED_EXIT] and dumped.is_set()
    message = caplog.records[0].getMessage()
    assert message.startswith("sink: its loop has not come round for ")
    assert "(threading.py:" in message  # where it waits: in the library
    assert "called from stuck_in_a_client_call (test_liveness.py:" in message  # what called it


def test_a_loop_that_keeps_coming_round_is_left_alone() -> None:
    now = [0.0]
    exits: list[int] = []
    dog = Watchdog("learner", limit_s=5.0, clock=lambda: now[0], exit=exits.append,
                   dump=lambda: None)
    for _ in range(100):  # 100 rounds 1 s apart: 100 s in all, never 5 s without a beat
        liveness.beat(lambda: now[0])
        now[0] += 1.0
        assert dog.check()
    now[0] += 5.0
    assert not dog.check() and exits == [STALLED_EXIT]


def test_a_watchdog_stops_with_its_loop_and_zero_watches_nothing() -> None:
    exits: list[int] = []
    with Watchdog("source", limit_s=60.0, exit=exits.append, dump=lambda: None) as dog:
        liveness.beat()
        assert dog.thread is not None and dog.thread.is_alive()
    # its thread ends: a process that ran the loop in a thread (a benchmark) goes on without it
    dog.thread.join(timeout=30)  # it wakes at once when stopped, not after a quarter limit
    assert not dog.thread.is_alive() and exits == []
    off = Watchdog("worker", limit_s=0, exit=exits.append, dump=lambda: None).start()
    assert off.thread is None
