"""The model record: a model version on the compacted ``<prefix>.models`` topic.

Every scorer reads this topic from the start and serves, per deployment, the newest version
the learner published, or the version an operator pinned. Two kinds of records, one format:

- key ``<deployment>``: the learner's latest snapshot (compaction keeps only the newest);
- key ``<deployment>#pin``: a pinned version; a tombstone (no value) under it unpins.

Value: one JSON header line, then the signed snapshot bytes
(:func:`rowcast.models.snapshot.dump_snapshot`)::

    {"v": 1, "deployment": "spend", "generation": "...", "version": 12, "samples": 4000,
     "sig": "<hex>"}\\n<snapshot>

The snapshot's own HMAC vouches only for the model; ``sig`` vouches for everything a reader acts
on: deployment, generation, version, samples, whether it is a pin, and the snapshot's SHA-256,
HMAC-SHA256 keyed with the installation's snapshot key. Without it anyone able to produce to the
topic could replay deployment A's genuine snapshot as deployment B, or stamp it version 2**31 so
that B's scorers, whose versions only move forward, freeze. Readers call :meth:`verify` before
they act on any field.

>>> r = ModelRecord("spend", "g1", 12, 4000, b"RCSNAP1...")
>>> back = ModelRecord.decode(r.kafka_key(), r.encode(b"k" * 32))
>>> back.verify(b"k" * 32)
>>> (back.deployment, back.version)
('spend', 12)
>>> pin = ModelRecord("spend", "g1", 3, 900, b"x", pin=True)
>>> pin.kafka_key(), parse_key(pin.kafka_key())
(b'spend#pin', ('spend', True))
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import orjson

from rowcast.core.errors import SnapshotError

VERSION = 1
PIN_SUFFIX = "#pin"


def parse_key(key: bytes | None) -> tuple[str, bool]:
    """(deployment, is a pin record) from a models-topic key."""
    name = (key or b"").decode(errors="replace")
    if name.endswith(PIN_SUFFIX):
        return name[: -len(PIN_SUFFIX)], True
    return name, False


def pin_key(deployment: str) -> bytes:
    return (deployment + PIN_SUFFIX).encode()


@dataclass(frozen=True, slots=True)
class ModelRecord:
    deployment: str
    generation: str
    version: int
    samples: int
    snapshot: bytes
    pin: bool = False
    signature: str | None = None  # set by decode; encode signs afresh

    def kafka_key(self) -> bytes:
        return pin_key(self.deployment) if self.pin else self.deployment.encode()

    def _mac(self, key: bytes) -> str:
        signed = orjson.dumps([VERSION, self.deployment, self.generation, self.version,
                               self.samples, self.pin, hashlib.sha256(self.snapshot).hexdigest()])
        return hmac.new(key, signed, hashlib.sha256).hexdigest()

    def encode(self, key: bytes) -> bytes:
        header = {"v": VERSION, "deployment": self.deployment, "generation": self.generation,
                  "version": self.version, "samples": self.samples, "sig": self._mac(key)}
        return orjson.dumps(header) + b"\n" + self.snapshot

    def verify(self, key: bytes) -> None:
        """Raise :class:`SnapshotError` unless ``key`` signed exactly these fields."""
        if not self.signature or not hmac.compare_digest(self.signature, self._mac(key)):
            raise SnapshotError(f"models topic record for {self.deployment!r} (version "
                                f"{self.version}) failed signature verification: refusing it "
                                "(forged, replayed under another name, or signed with another "
                                "ROWCAST_SNAPSHOT_KEY)")

    @classmethod
    def decode(cls, key: bytes | None, value: bytes) -> ModelRecord:
        """Raises :class:`SnapshotError` (what the model feed refuses) for anything unreadable."""
        end = value.find(b"\n")
        if end < 0:
            raise SnapshotError("models topic record has no header line")
        try:
            h = orjson.loads(value[:end])
            deployment, generation, version = str(h["deployment"]), str(h["generation"]), int(
                h["version"])
            samples = int(h.get("samples", 0))
            signature = str(h["sig"]) if h.get("sig") is not None else None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise SnapshotError("models topic record header is unreadable") from None
        name, pin = parse_key(key)
        if name != deployment:
            raise SnapshotError(f"models topic record for {deployment!r} arrived under key "
                                f"{name!r}: refusing it")
        return cls(deployment, generation, version, samples, value[end + 1:], pin, signature)
