"""Stand-ins for what the scoring agent talks to, so :class:`BatchScorer` is tested without
faust or a broker: the records faust hands it and a publisher that keeps what it was given."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Msg:
    """What faust hands the agent for one record (the attributes the scorer reads)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


@dataclass
class Published:
    """A publisher that acknowledges everything and remembers each batch."""

    calls: list = field(default_factory=list)

    def publish(self, predictions, dead_letters=(), labels=()) -> int:
        self.calls.append((list(predictions), list(dead_letters), list(labels)))
        return len(self.calls[-1][0])


class Exited(Exception):
    """Stands in for os._exit in-process, so the test sees the exit code."""


def record_exits(monkeypatch: object) -> list[int]:
    """Replace the scorer's ``os._exit`` with one that records the code and raises
    :class:`Exited`; the codes, in order."""
    from rowcast.streams import scorer

    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(scorer.os, "_exit", fake_exit)  # type: ignore[attr-defined]
    return codes
