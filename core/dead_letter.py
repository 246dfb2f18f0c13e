"""The dead letter: a record rowcast could not use, set aside on ``<prefix>.dlq`` with its reason.

Format (JSON, one record per letter, keyed on the topic by the stage name)::

    {"v": 1, "stage": "score", "reason": "bad_envelope", "error": "...",
     "origin": {"topic": ..., "partition": ..., "offset": ...},
     "key": {"encoding": "utf-8" | "base64" | "null", "data": ...},
     "value": {...same...}, "context": {...}, "at_us": 1700000000000000}

The original bytes travel with the letter (as text when they are UTF-8, else base64), so
``rowcast dlq replay`` can send them back where they came from after a fix. ``context`` holds
what the stage knew of the failure (for the source: table, key, column, raw text). Letters
written before ``v`` existed decode as version 1.

>>> letter = DeadLetter("score", "bad_envelope", "not JSON", topic="t", partition=0, offset=7,
...                     key=b'{"id":1}', value=b"\\xff", at_us=1)
>>> DeadLetter.decode(letter.encode()) == letter
True
>>> letter.kafka_key()
b'score'
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from rowcast.core.errors import DecodeError

VERSION = 1


def _now_us() -> int:
    return time.time_ns() // 1000


def _payload(data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"encoding": "null", "data": None}
    try:
        return {"encoding": "utf-8", "data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"encoding": "base64", "data": base64.b64encode(data).decode("ascii")}


def _original(payload: Any) -> bytes | None:
    if not isinstance(payload, dict):
        return None
    if payload.get("encoding") == "utf-8":
        return str(payload["data"]).encode()
    if payload.get("encoding") == "base64":
        return base64.b64decode(payload["data"])
    return None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What failed (``stage``, ``reason``, ``error``), where it came from, and the original."""

    stage: str
    reason: str
    error: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    context: dict[str, Any] = field(default_factory=dict)
    at_us: int = field(default_factory=_now_us)

    def kafka_key(self) -> bytes:
        return self.stage.encode()

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": VERSION, "stage": self.stage, "reason": self.reason, "error": self.error,
            "origin": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "key": _payload(self.key), "value": _payload(self.value), "context": self.context,
            "at_us": self.at_us,
        }, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def decode(cls, data: bytes) -> DeadLetter:
        try:
            doc = orjson.loads(data)
            origin = doc.get("origin") or {}
            return cls(str(doc["stage"]), str(doc["reason"]), str(doc.get("error", "")),
                       origin.get("topic"), origin.get("partition"), origin.get("offset"),
                       _original(doc.get("key")), _original(doc.get("value")),
                       dict(doc.get("context") or {}), int(doc.get("at_us", 0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodeError(f"not a dead letter: {exc!r}") from None
