"""Wait for a condition with a deadline, instead of sleeping a guessed amount."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05,
               message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` until truthy and return that value; fail the test with ``message``
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout_s} s waiting for: {text}")
        time.sleep(interval_s)
