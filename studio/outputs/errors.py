"""Exceptions raised by :mod:`studio.outputs`.

Every error derives from :class:`OutputsError` so callers (the Gradio UI)
can catch one type and show its message, which always says what went wrong
and what is accepted instead.
"""

from __future__ import annotations


class OutputsError(Exception):
    """Base class of every error raised by the outputs package."""


class MetadataError(OutputsError, ValueError):
    """Text or an image does not carry readable generation metadata."""


class StoreError(OutputsError, OSError):
    """An output could not be written to disk (or only partly recorded)."""


class HistoryError(OutputsError):
    """The history database could not be opened, read or written."""
