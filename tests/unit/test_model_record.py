"""The models-topic record is signed as a whole: deployment, generation, version, samples, the
pin flag and the snapshot; a reader refuses anything it cannot verify (issue: a genuine snapshot
replayed under another deployment's name, or stamped with a forged version)."""

from __future__ import annotations

import dataclasses

import pytest

from rowcast.core.errors import SnapshotError
from rowcast.core.model_record import ModelRecord

KEY = b"k" * 32


def genuine() -> ModelRecord:
    return ModelRecord("alpha", "g1", 7, 100, b"RCSNAP1\nsnapshot-bytes")


def test_a_signed_record_round_trips_and_verifies():
    record = genuine()
    back = ModelRecord.decode(record.kafka_key(), record.encode(KEY))
    back.verify(KEY)
    assert dataclasses.replace(back, signature=None) == record


@pytest.mark.parametrize("change", [
    {"deployment": "beta"}, {"version": 2**31}, {"generation": "g2"}, {"samples": 1},
    {"snapshot": b"RCSNAP1\nother"}, {"pin": True},
])
def test_any_field_changed_after_signing_is_refused(change):
    signed = ModelRecord.decode(genuine().kafka_key(), genuine().encode(KEY))
    forged = dataclasses.replace(signed, **change)
    with pytest.raises(SnapshotError, match="signature"):
        forged.verify(KEY)


def test_a_genuine_value_under_another_key_is_refused():
    """Replaying alpha's genuine record under key b'beta' (or as beta's pin) is refused."""
    value = genuine().encode(KEY)
    for key in (b"beta", b"alpha#pin", b"beta#pin"):
        with pytest.raises(SnapshotError):
            ModelRecord.decode(key, value).verify(KEY)


def test_an_unsigned_or_wrongly_signed_record_is_refused():
    with pytest.raises(SnapshotError, match="signature"):
        ModelRecord.decode(b"alpha", genuine().encode(b"x" * 32)).verify(KEY)
    unsigned = b'{"v":1,"deployment":"alpha","generation":"g1","version":7,"samples":1}\nsnap'
    with pytest.raises(SnapshotError, match="signature"):
        ModelRecord.decode(b"alpha", unsigned).verify(KEY)
