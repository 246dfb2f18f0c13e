"""The model record: a model version on the compacted ``<prefix>.models`` topic.

Every scorer reads this topic from the start and serves, per deployment, the newest version
the learner published, or the version an operator pinned. Two kinds of records, one format:

- key ``<deployment>``: the learner's latest snapshot (compaction keeps only the newest);
- key ``<deployment>#pin``: a pinned version; a tombstone (no value) under it unpins.

Value: one JSON header line, then the signed snapshot bytes
(:func:`rowcast.models.snapshot.dump_snapshot`)::

    {"v": 1, "deployment": "spend", "generation": "...", "version": 12, "samples": 4000}\\n<snapshot>

>>> r = ModelRecord("spend", "g1", 12, 4000, b"RCSNAP1...")
>>> ModelRecord.decode(r.kafka_key(), r.encode()) == r
True
>>> pin = ModelRecord("spend", "g1", 3, 900, b"x", pin=True)
>>> pin.kafka_key(), parse_key(pin.kafka_key())
(b'spend#pin', ('spend', True))
"""

from __future__ import annotations

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

    def kafka_key(self) -> bytes:
        return pin_key(self.deployment) if self.pin else self.deployment.encode()

    def encode(self) -> bytes:
        header = {"v": VERSION, "deployment": self.deployment, "generation": self.generation,
                  "version": self.version, "samples": self.samples}
        return orjson.dumps(header) + b"\n" + self.snapshot

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
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise SnapshotError("models topic record header is unreadable") from None
        return cls(deployment, generation, version, samples, value[end + 1:],
                   parse_key(key)[1])
