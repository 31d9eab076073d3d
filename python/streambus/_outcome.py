"""What a handler says back: return or raise one of these.

A handler that returns normally (any value, ``None`` included) acknowledges the
entry. ``Retry`` and ``DeadLetter`` may be returned or raised. Any other
exception retries the entry (after the worker's backoff), except
``DecodeError`` and ``InvalidInputError``, which dead-letter it at once (retrying
cannot fix them) — the same mapping as the Rust ``Outcome``.
"""

from __future__ import annotations

from typing import Optional


class Retry(Exception):
    """Try this entry again later: after ``delay`` seconds if given, else after the
    worker's ``retry_backoff`` for its delivery count. After ``max_deliveries``
    deliveries it is dead-lettered with ``reason``."""

    def __init__(self, reason: str = "retry requested", *, delay: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.delay = delay

    def __repr__(self) -> str:
        return f"Retry({self.reason!r}, delay={self.delay!r})"


class DeadLetter(Exception):
    """This entry can never succeed: move it to the dead-letter stream now, with
    ``reason``."""

    def __init__(self, reason: str = "dead-lettered by the handler"):
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"DeadLetter({self.reason!r})"
