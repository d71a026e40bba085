"""The History tab: past runs from the OutputStore's SQLite history.

Filter by prompt text, click a thumbnail to see the image and its settings,
"Reopen in Generate" restores the settings into the Generate form (seed of
that very image, batch size 1) and shows the image there.
"""

from __future__ import annotations

from html import escape
from typing import Any

import gradio as gr

from .errors import USER_ERRORS, Notify, gradio_warning, status_html, unexpected_message, user_message
from .generate_tab import FORM_FIELDS, GenerateHandlers, GenerateTab, idle_progress_html
from .session import SessionState

SEARCH_OUTPUTS: tuple[str, ...] = ("gallery", "info", "state")
SELECT_OUTPUTS: tuple[str, ...] = ("image", "details", "reopen", "state")
REOPEN_OUTPUTS: tuple[str, ...] = FORM_FIELDS + ("status", "preview", "progress", "tabs")
GENERATE_TAB_ID = "generate"
HISTORY_TAB_ID = "history"


def skip() -> Any:
    return gr.skip()


class HistoryHandlers:
    """Event handlers of the History tab. ``store`` is the app's OutputStore (shared; its
    history is thread-safe); what a session has listed lives in its ``SessionState``."""

    def __init__(self, store, generate: GenerateHandlers, *, notify: Notify = gradio_warning, page_size: int = 60):
        self.store = store
        self.generate = generate
        self.notify = notify
        self.page_size = page_size

    def search(self, session: SessionState, text: str | None) -> tuple:
        """``SEARCH_OUTPUTS``: the newest ``page_size`` runs whose prompt contains ``text``."""
        text = (text or "").strip()
        try:
            records = self.store.list(limit=self.page_size, text=text or None)
            total = self.store.history.count(text=text or None)
        except USER_ERRORS as e:
            message = user_message(e, "Cannot read the history")
            self.notify(message)
            return skip(), status_html(message, "error"), session
        except Exception as e:  # noqa: BLE001
            message = unexpected_message(e, "Reading the history")
            self.notify(message)
            return skip(), status_html(message, "error"), session
        session.history_ids = [r.id for r in records]
        session.history_selected = None
        items = [(str(r.path), f"#{r.id} · {r.prompt[:60] or '(empty prompt)'}") for r in records]
        what = f' matching "{text}"' if text else ""
        if not records:
            info = f"No runs{what} yet." if not text else f"No runs{what}."
        elif total > len(records):
            info = f"Showing the newest {len(records)} of {total} runs{what}."
        else:
            info = f"{total} run(s){what}."
        return items, status_html(info), session

    def select(self, session: SessionState, index: Any) -> tuple:
        """``SELECT_OUTPUTS`` for thumbnail ``index`` of the current listing."""
        try:
            output_id = session.history_ids[int(index)]
        except (TypeError, ValueError, IndexError):
            return skip(), status_html("That entry is no longer listed; refresh the history.", "warning"), \
                gr.update(interactive=False), session
        record = self.store.get(output_id)
        if record is None or not record.path.is_file():
            message = f"Run #{output_id} is gone from the outputs folder; refresh the history."
            self.notify(message)
            return None, status_html(message, "warning"), gr.update(interactive=False), session
        session.history_selected = output_id
        rows = [("Prompt", record.prompt or "(empty)"), ("Negative", record.negative_prompt or "(none)"),
                ("Sampler", record.sampler), ("Steps", record.steps), ("CFG", f"{record.cfg:g}"),
                ("Seed", record.seed), ("Size", f"{record.width}×{record.height}"), ("Model", record.model),
                ("Created", record.created), ("File", record.relative_path)]
        table = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
        details = f'<table class="studio-details" data-output-id="{record.id}">{table}</table>'
        return str(record.path), details, gr.update(interactive=True), session

    def reopen(self, session: SessionState) -> tuple:
        """``REOPEN_OUTPUTS``: the selected run's settings in the Generate form, its image
        in the preview, and the Generate tab selected."""
        none = tuple(skip() for _ in FORM_FIELDS)
        if session.history_selected is None:
            message = "Select a run in the history first."
            self.notify(message)
            return none + (status_html(message, "warning"), skip(), skip(), skip())
        record = self.store.get(session.history_selected)
        if record is None:
            message = f"Run #{session.history_selected} is no longer in the history."
            self.notify(message)
            return none + (status_html(message, "warning"), skip(), skip(), skip())
        try:
            settings = record.settings()
        except USER_ERRORS as e:
            message = user_message(e, f"Cannot restore run #{record.id}")
            self.notify(message)
            return none + (status_html(message, "error"), skip(), skip(), skip())
        values = {name: getattr(settings, name) for name in FORM_FIELDS if hasattr(settings, name)}
        values["batch_size"] = 1  # the seed is this image's own seed
        restored = self.generate._restore(values, [], f"Reopened run #{record.id} (seed {settings.seed})")
        image = str(record.path) if record.path.is_file() else skip()
        return restored + (image, idle_progress_html(f"run #{record.id}"), gr.Tabs(selected=GENERATE_TAB_ID))


def build_history_tab(handlers: HistoryHandlers, state: gr.State, generate: GenerateTab, tabs: gr.Tabs,
                      tab: gr.Tab) -> None:
    """Create the History tab's widgets (inside an open ``gr.Tab``) and wire them."""
    with gr.Row(equal_height=True):
        search = gr.Textbox(label="Filter by prompt text", placeholder="e.g. red circle", elem_id="history_search",
                            scale=4)
        refresh = gr.Button("Refresh", elem_id="history_refresh", scale=1)
    info = gr.HTML(status_html("Open this tab or press Refresh to list past runs."), elem_id="history_info")
    with gr.Row(equal_height=False):
        gallery = gr.Gallery(label="Past runs (newest first)", elem_id="history_gallery", columns=6, height=520,
                             allow_preview=False, object_fit="contain", interactive=False, scale=3,
                             fit_columns=False)
        with gr.Column(scale=2, min_width=300):
            image = gr.Image(label="Selected run", type="filepath", interactive=False, elem_id="history_image",
                             height=300)
            details = gr.HTML(elem_id="history_details")
            reopen = gr.Button("Reopen in Generate", variant="primary", interactive=False, elem_id="history_reopen")

    light = dict(concurrency_limit=None, concurrency_id="light", show_progress="hidden")
    search_io = dict(inputs=[state, search], outputs=[gallery, info, state])
    search.submit(handlers.search, **search_io, **light, api_name="history")
    refresh.click(handlers.search, **search_io, **light, api_visibility="undocumented")
    tab.select(handlers.search, **search_io, **light, api_visibility="undocumented")

    def on_select(session: SessionState, evt: gr.SelectData):
        return handlers.select(session, evt.index)

    gallery.select(on_select, inputs=[state], outputs=[image, details, reopen, state], **light,
                   api_visibility="undocumented")
    reopen.click(handlers.reopen, inputs=[state],
                 outputs=[*generate.form, generate.status, generate.preview, generate.progress, tabs],
                 **light, api_visibility="undocumented")

