"""The error every layer raises for bad input (kept free of imports so any module can use it)."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request was rejected before any work started.

    The message says what was wrong and what is allowed; ``field`` names the
    request field (``None`` when it concerns the hooks or the cache)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field
