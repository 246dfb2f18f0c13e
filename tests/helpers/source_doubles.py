"""Stand-ins for what the CDC source talks to, where a test needs one to misbehave."""

from __future__ import annotations

from kafka.errors import KafkaTimeoutError
from kafka.future import Future


class RefusingProducer:
    """Every send comes back refused, as when the broker is unreachable."""

    def send(self, *args, **kwargs) -> Future:
        future = Future()
        future.failure(KafkaTimeoutError("broker said no"))
        return future

    def flush(self) -> None:
        pass

    def partitions_for(self, topic: str) -> set[int]:
        return {0}
