"""The error every layer raises for bad input (kept free of imports so any module can use it)."""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request was rejected before any work started.

    The message says what was wrong and what is allowed; ``field`` names the
    request field (``None`` when it concerns the hooks or the cache)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def check_text_item(item, kind: type, where: str, field: str, *, text: str = "prompt",
                    empty: str = "its prompt is empty") -> None:
    """The shared first checks of a list of typed items with a text (regions, stage prompts, prompt parts):
    ``item`` is a ``kind`` and its ``text`` attribute is non-empty; messages start with ``where``."""
    if not isinstance(item, kind):
        raise InvalidRequest(f"{where}: expected a {kind.__name__}, got {type(item).__name__}", field)
    value = getattr(item, text)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{where}: {empty}", field)
