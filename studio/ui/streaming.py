"""Running a controller call in a worker thread while a Gradio generator streams its progress.

Every workbench tab does the same: refuse a second run in the same browser session, start the work with a cancel
token, hand each batch of progress events to the page (only the newest matters, the rest are skipped), then report
the result or the error. :func:`stream_run` is that loop; :class:`RunSession` the per-session state it needs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from studio.engine import Cancelled, CancelToken

from .errors import USER_ERRORS, status_html, unexpected_message, user_message

_END = object()


@dataclass
class RunSession:
    """One browser session's run state (never shared between sessions); subclasses add their own fields."""

    cancel: CancelToken | None = None

    def __deepcopy__(self, memo):  # gr.State copies its initial value per session: start idle and empty
        return type(self)()

    def close(self) -> None:
        if self.cancel is not None:
            self.cancel.cancel()


class Busy(Exception):
    """The session already has a run going."""


def stream_run(session: RunSession, work: Callable[[CancelToken, Callable[[Any], None]], Any],
               name: str) -> Iterator[tuple[str, Any]]:
    """Run ``work(token, emit)`` in a thread named ``name``; yield ``("events", [emitted, ...])`` as batches arrive,
    then ``("done", result)`` or ``("error", exception)`` (a :class:`~studio.engine.Cancelled` among them).
    Raises :class:`Busy` (before starting anything) when the session is already running."""
    if session.cancel is not None:
        raise Busy("a run is in progress; stop it first")
    token = CancelToken()
    session.cancel = token
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def target():
        try:
            outcome["done"] = work(token, events.put)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e
        finally:
            events.put(_END)

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    try:
        ended = False
        while not ended:
            batch = [events.get()] + [events.get() for _ in range(events.qsize())]
            ended = any(e is _END for e in batch)
            emitted = [e for e in batch if e is not _END]
            if emitted:
                yield "events", emitted
        worker.join()
    finally:
        session.cancel = None
    yield ("error", outcome["error"]) if "error" in outcome else ("done", outcome["done"])


def run_error(error: BaseException, context: str) -> tuple[str, str, str]:
    """(progress label, status message, status level) for a run that ended with ``error``: a stop is a warning, bad
    input its message, anything else a logged bug with one line for the page."""
    if isinstance(error, Cancelled):
        return "stopped", "stopped", "warning"
    if isinstance(error, USER_ERRORS):
        return "failed", user_message(error), "error"
    return "failed", unexpected_message(error, context), "error"


def stop_run(session: RunSession | None) -> str:
    """Ask the session's run to stop; the status line to show."""
    if session is not None and session.cancel is not None:
        session.cancel.cancel()
        return status_html("stopping…", "warning")
    return status_html("nothing is running", "info")


def stream_outputs(session: RunSession, work: Callable[[CancelToken, Callable[[Any], None]], Any], name: str,
                   context: str, on_events: Callable[[list], tuple], message: Callable[[Any, str], tuple],
                   stopped: str = "stopped"):
    """Drive :func:`stream_run` for a handler that yields its outputs: ``on_events(batch)`` makes the outputs for
    each batch of emitted events; a busy session or a failed or stopped run yields ``message(progress, status)``
    (``progress`` is ``gr.skip()`` when nothing ran; ``stopped`` is the status text of a stopped run). Returns the
    run's result, or None when it did not finish: ``result = yield from stream_outputs(...)``."""
    import gradio as gr

    from .generate_tab import progress_html

    try:
        for kind, value in stream_run(session, work, name):
            if kind == "events":
                yield on_events(value)
    except Busy as e:
        yield message(gr.skip(), status_html(str(e), "warning"))
        return None
    if kind == "error":
        label, text, level = run_error(value, context)
        text = stopped if label == "stopped" else text
        yield message(progress_html(0, 1, label), status_html(text, level))
        return None
    return value


def run_controls(prefix: str, label: str, hint: str):
    """The run row every workbench tab has: its primary button, Stop, a progress bar and a status line, with
    element ids ``<prefix>_run``, ``_stop``, ``_progress``, ``_status``. Returns (run, stop, progress, status)."""
    import gradio as gr

    from .generate_tab import progress_html

    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}_run")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}_stop")
    progress = gr.HTML(progress_html(0, 1, "idle"), elem_id=f"{prefix}_progress")
    status = gr.HTML(status_html(hint), elem_id=f"{prefix}_status")
    return run, stop, progress, status
