"""Turning exceptions into messages for the user (never a traceback in the page).

Expected problems (bad input, unreadable images, a missing model, a bad preset)
carry messages written for people: what was wrong and what is allowed. Event
handlers catch :data:`USER_ERRORS` and show the message with ``gr.Warning``;
anything else is a bug: it is logged with its traceback on the server and the
page gets one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gradio as gr

from studio.engine import InvalidRequest
from studio.models import ModelLoadError
from studio.outputs import MetadataError, OutputsError
from studio.presets import PresetError

log = logging.getLogger("studio.ui")

#: Exceptions whose message is shown to the user as is.
USER_ERRORS: tuple[type[BaseException], ...] = (
    InvalidRequest, MetadataError, ModelLoadError, PresetError, OutputsError, ValueError, TypeError,
)

#: ``notify(message)`` shows a message to the user (``gr.Warning`` in the app).
Notify = Callable[[str], None]


def gradio_warning(message: str) -> None:
    """Show ``message`` as a yellow toast (a Python warning outside a request)."""
    gr.Warning(message, duration=12)


def user_message(exc: BaseException, context: str = "") -> str:
    """One line for the user: ``"<context>: <message>"``; fields named when known."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, InvalidRequest) and exc.field and exc.field not in text.split(" ", 1)[0]:
        text = f"{exc.field}: {text}"
    return f"{context}: {text}" if context else text


def unexpected_message(exc: BaseException, context: str) -> str:
    """Log ``exc`` with its traceback on the server; return a short line for the page."""
    log.error("%s failed", context, exc_info=exc)
    return f"{context} failed unexpectedly ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); " \
           "details are in the server log"


_ROLE_NAMES = (("uncond prompt", "Negative prompt"), ("cond prompt", "Prompt"))


def friendly_warning(text: str) -> str:
    """Engine warnings name prompts by role ("cond prompt truncated..."); say "Prompt"."""
    for role, name in _ROLE_NAMES:
        if text.startswith(role):
            return name + text[len(role):]
    return text


def status_html(message: str, kind: str = "info") -> str:
    """The status line under the buttons (``kind``: info, ok, warning, error)."""
    from html import escape

    icon = {"ok": "✔", "warning": "⚠", "error": "✖"}.get(kind, "")
    body = "<br>".join(escape(line) for line in message.splitlines())
    return f'<div class="studio-status studio-{kind}">{icon + " " if icon else ""}{body}</div>'
