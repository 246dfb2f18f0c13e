"""Errors users can catch by class, each with a message a person can act on.

Split into retryable faults (the service may come back: retry with backoff) and fatal ones
(configuration or data that will not fix itself). Dead-letter reasons name why an event was set
aside instead of crashing the pipeline (the record itself is
:class:`rowcast.core.dead_letter.DeadLetter`).
"""

from __future__ import annotations


class RowcastError(Exception):
    """Base class of every error rowcast raises on purpose."""


class RetryableError(RowcastError):
    """A fault that may pass (a service restarting, a network blip): retry with backoff."""


class FatalError(RowcastError):
    """A fault that will not fix itself: stop and tell the operator what to change."""


class ConfigError(FatalError):
    """Settings or a deployment definition that cannot work as given."""


class SourceError(FatalError):
    """The CDC source cannot capture changes (wal_level, rights, slots, table shape)."""


class DevStackError(FatalError):
    """The local development stack (Postgres, Kafka) could not be set up or started."""


class DecodeError(RowcastError):
    """Bytes from the server or an event from a topic that do not parse as expected."""


class SnapshotError(FatalError):
    """A model snapshot that must not be loaded: tampered, truncated or from another river."""


class UndecodableValue(DecodeError):
    """A column value the CDC source cannot turn into its event encoding (out of range, a text
    it cannot read): its row is set aside on the dead-letter topic and the stream goes on."""

    def __init__(self, column: str, type_oid: int, raw: str, reason: str) -> None:
        super().__init__(f"column {column!r} (type OID {type_oid}) cannot be decoded: {reason}")
        self.column = column
        self.type_oid = type_oid
        self.raw = raw
        self.reason = reason


class EventTooLarge(DecodeError):
    """A change event larger than Kafka accepts (the producer's ``max_request_size`` or the
    topic's ``max.message.bytes``): its row is set aside on the dead-letter topic instead."""

    def __init__(self, size: int, limit: int, column: str | None, raw: str) -> None:
        super().__init__(f"change event of {size} bytes is too large for Kafka (limit {limit} "
                         "bytes); raise the topic's max.message.bytes to stream such rows")
        self.size = size
        self.limit = limit
        self.column = column
        self.raw = raw
