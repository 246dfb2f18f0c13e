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
