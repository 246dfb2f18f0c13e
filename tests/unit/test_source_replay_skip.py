"""Which transactions the source drops as already published: found by a bench run that lost a
row (two writers; two commit records adjacent in WAL)."""

from __future__ import annotations

import struct

from rowcast.connectors.cdc_source import CdcSource
from rowcast.connectors.slot import RawChange


def begin(final_lsn: int, xid: int) -> RawChange:
    return RawChange(final_lsn - 100, xid, b"B" + struct.pack(">qqi", final_lsn, 0, xid))


def source_after(last_commit_lsn: int) -> CdcSource:
    source = CdcSource.__new__(CdcSource)  # only what _handle reads for a Begin
    source.last_commit_lsn = last_commit_lsn
    source._txn = None
    return source


def test_a_commit_record_right_after_the_last_published_one_is_not_a_replay():
    """T1's commit record ends at 0x1A59F10 (the end LSN the source remembers); T2's commit
    record starts at that very LSN (0x1A59F10 is T2's final LSN). T2 is new."""
    source = source_after(0x1A59F10)
    source._handle(begin(0x1A59F10, 3110))
    assert source._txn is not None and not source._txn.skip


def test_a_transaction_committed_before_the_remembered_end_is_a_replay():
    source = source_after(0x1A59F10)
    source._handle(begin(0x1A59EE0, 3111))  # T1 itself: its commit record starts before
    assert source._txn is not None and source._txn.skip


def _loop_only_source(poll_once, **settings: float) -> CdcSource:
    """A source whose ``run`` loop is real and whose rounds are ``poll_once`` (no server, no
    Kafka): what the pacing tests drive with a fake clock."""
    source = CdcSource.__new__(CdcSource)
    source.conn = source.stream = None
    source.settings = type("S", (), {"source_idle_backoff_max_s": 0.02,
                                     "source_poll_interval_s": 0.015,
                                     "source_busy_rows_per_s": 2000,
                                     "source_poll_interval_max_s": 0.05, **settings})()
    source.poll_once = poll_once
    source.behind = False
    source._maybe_beat = source._maybe_idle_watermark = lambda: None
    source._save_position = lambda now=False: None
    return source


def test_a_commit_inserted_but_not_yet_flushed_is_polled_once_it_is_flushed(monkeypatch):
    """The peek decodes only up to the flushed WAL. A commit whose record was inserted but not
    flushed when the source looked is not in that peek; the source must look again once the
    flush position moves, not wait for more WAL to be written (a stall of up to the heartbeat
    interval, seen as p99 latency spikes of seconds at 1,000 single-row commits/s)."""
    import threading

    from rowcast.connectors import cdc_source

    insert_lsn, flush_lsn = [200], [100]
    monkeypatch.setattr(cdc_source.slot, "current_wal_lsn", lambda conn: insert_lsn[0])
    monkeypatch.setattr(cdc_source.slot, "current_flush_lsn", lambda conn: flush_lsn[0])
    stop = threading.Event()
    polls: list[int] = []

    def poll_once() -> int:
        polls.append(flush_lsn[0])
        if flush_lsn[0] < 200:
            flush_lsn[0] = 200  # the writer's commit reaches the disk right after this peek
            return 0
        stop.set()
        return 1

    source = _loop_only_source(poll_once, source_idle_backoff_max_s=0.01,
                               source_poll_interval_s=0.0)
    waiter = threading.Thread(target=source.run, args=(stop,), daemon=True)
    waiter.start()
    waiter.join(2.0)
    stop.set()
    assert polls == [100, 200], polls


class FakeLoop:
    """What the source's loop reads while the pacing tests drive it: a clock, a flushed WAL
    position that moves with each round, and a stop that ends the loop after ``rounds``
    rounds (its waits move the clock, and are recorded)."""

    def __init__(self, monkeypatch, rounds: int) -> None:
        from rowcast.connectors import cdc_source

        self.now, self.flush, self.rounds = 0.0, 100, rounds
        self.starts: list[float] = []
        self.waits: list[float] = []
        monkeypatch.setattr(cdc_source.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(cdc_source.slot, "current_flush_lsn", lambda conn: self.flush)

    def is_set(self) -> bool:
        return len(self.starts) >= self.rounds

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def round(self, takes_s: float) -> None:
        """A round starts now, takes ``takes_s``, and a commit comes meanwhile."""
        self.starts.append(self.now)
        self.now += takes_s
        self.flush += 1

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]


def test_rounds_are_at_least_the_poll_interval_apart(monkeypatch):
    """Changes always waiting (single-row commits at full speed): the source still starts a
    peek round at most every source_poll_interval_s, so commits gather into fewer rounds."""
    loop = FakeLoop(monkeypatch, rounds=4)

    def poll_once() -> int:
        loop.round(0.001)
        return 1

    _loop_only_source(poll_once, source_poll_interval_s=0.005).run(loop)
    gaps = loop.gaps()
    assert gaps and all(g >= 0.005 - 1e-9 for g in gaps), gaps


def test_under_a_high_commit_rate_the_rounds_stretch_up_to_the_cap(monkeypatch):
    """Commits at 10,000 rows/s: each round costs the pipeline the same whatever it carries, so
    the gap grows with the rate (base 20 ms at 2,500 rows/s) and stops at the 50 ms cap; at
    1,000 rows/s it stays at the base."""
    def gaps_at(rows_per_s: float) -> list[float]:
        loop = FakeLoop(monkeypatch, rounds=80)

        def poll_once() -> int:
            rows = round(rows_per_s * (loop.now - loop.starts[-1])) if loop.starts else 1
            loop.round(0.001)
            return max(rows, 1)

        _loop_only_source(poll_once, source_poll_interval_s=0.02,
                          source_busy_rows_per_s=2500).run(loop)
        return loop.gaps()

    busy = gaps_at(10_000)
    assert abs(busy[-1] - 0.05) < 1e-6 and max(busy) <= 0.05 + 1e-9, busy[-5:]
    calm = gaps_at(1_000)
    assert all(abs(g - 0.02) < 1e-6 for g in calm[1:]), calm[:5]


def test_a_source_behind_peeks_again_at_once(monkeypatch):
    """A bulk load: every peek returns all it may (source_max_changes), so more WAL waits
    already and any gap would only add lag (the 50 ms cap cost a 1M-row COPY 10-15 %)."""
    loop = FakeLoop(monkeypatch, rounds=20)

    def poll_once() -> int:
        loop.round(0.01)  # 5,000 changes in 10 ms
        source.behind = True
        return 5000

    source = _loop_only_source(poll_once)
    source.run(loop)
    gaps = loop.gaps()
    assert all(abs(g - 0.01) < 1e-9 for g in gaps), gaps
