"""The prediction record: what goes to ``<prefix>.predictions.<deployment>`` and to Postgres.

One flat JSON object per scored row, keyed on the topic by the source row's primary key, so a
compacted predictions topic keeps the latest prediction per row. This is the contract with
downstream services; ``v`` is its format version (records written before it existed are v1)::

    {"v": 1, "deployment": "spend", "model": "linear_regression", "model_version": 12,
     "source": {"schema": "public", "table": "customers", "lsn": 23456, "commit_ts_us": ...},
     "key": {"id": 7}, "prediction": 41.5, "score": 41.5, "scored_at_us": ...}

>>> r = PredictionRecord("spend", "linear_regression", 3, "public", "t", {"id": 7}, 1.5, 1.5,
...                      100, 1_700_000_000_000_000, 1_700_000_000_001_000)
>>> PredictionRecord.from_json(r.to_json()) == r
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from rowcast.core.errors import DecodeError
from rowcast.core.keys import key_id

VERSION = 1


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention: frozen costs 0.7 us per record (issue 15)
class PredictionRecord:
    deployment: str
    model: str
    model_version: int
    schema: str
    table: str
    key: dict[str, Any]
    prediction: Any
    score: float | None
    source_lsn: int
    source_commit_us: int
    scored_at_us: int

    def to_json(self) -> bytes:
        return orjson.dumps({
            "v": VERSION,
            "deployment": self.deployment,
            "model": self.model,
            "model_version": self.model_version,
            "source": {"schema": self.schema, "table": self.table, "lsn": self.source_lsn,
                       "commit_ts_us": self.source_commit_us},
            "key": self.key,
            "prediction": self.prediction,
            "score": self.score,
            "scored_at_us": self.scored_at_us,
        })

    def key_bytes(self) -> bytes:
        return key_id(self.key)


    @classmethod
    def from_json(cls, data: bytes) -> PredictionRecord:
        """Parse a record from the predictions topic; :class:`DecodeError` says what is wrong."""
        try:
            doc = orjson.loads(data)
            source = doc["source"]
            key, score = doc["key"], doc["score"]
            # positional, in field order (the sink decodes every prediction: kwargs and a
            # copy of a key that is a dict already cost ~0.5 of its ~2.5 µs)
            return cls(str(doc["deployment"]), str(doc["model"]), int(doc["model_version"]),
                       str(source["schema"]), str(source["table"]),
                       key if type(key) is dict else dict(key), doc["prediction"],
                       None if score is None else float(score), int(source["lsn"]),
                       int(source["commit_ts_us"]), int(doc["scored_at_us"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"not a prediction record: {exc!r}") from None


@dataclass(slots=True, unsafe_hash=True)  # immutable by convention: frozen costs 0.7 us per record (issue 15)
class PredictionTombstone:
    """The source row was deleted: a record with this key and no value on the predictions topic
    (compaction then forgets the key; the sink deletes the row's prediction). It travels in the
    same ordered list as predictions, so a row deleted and inserted again ends predicted."""

    deployment: str
    key: dict[str, Any]

    def key_bytes(self) -> bytes:
        return key_id(self.key)
