"""The studio's Gradio app: ``build_app(model, outputs_dir)`` and ``launch_app``.

The model is shared read-only by every browser session; each session's own
state (gallery, last seed, cancel token, history listing) lives in one
``gr.State``. Every model-bound event uses the concurrency group ``"gpu"``
with limit 1, so runs from all sessions go through one queue, one at a time;
light events (stop, seeds, examples, history) never wait behind a run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from studio.presets import PresetError, load_presets

from .attributes_tab import AttributesHandlers, AttributesSession, build_attributes_tab
from .composition_tab import CompositionHandlers, CompositionSession, build_composition_tab
from .editing_tab import EditingHandlers, EditingSession, build_editing_tab
from .generate_tab import GenerateHandlers, build_generate_tab
from .history_tab import GENERATE_TAB_ID, HISTORY_TAB_ID, HistoryHandlers, build_history_tab
from .inspection_tab import InspectionHandlers, InspectionSession, build_inspection_tab
from .personalization_tab import PersonalizationHandlers, PersonalizationSession, build_personalization_tab
from .session import SessionState

TITLE = "Controllable Diffusion Studio"
log = logging.getLogger("studio.ui")

CSS = """
#preview img, #gallery img, #history_gallery img, #history_image img { image-rendering: pixelated; }
#preview img, #history_image img { width: 100%; height: 100%; object-fit: contain; }
#attr_image img, #attr_zero img, #attr_filmstrip img { image-rendering: pixelated; }
#attr_image img, #attr_zero img { width: 100%; height: 100%; object-fit: contain; }
#compose_image img, #compose_mono img, #blend_gallery img { image-rendering: pixelated; }
#compose_image img, #compose_mono img { width: 100%; height: 100%; object-fit: contain; }
#pers_images img, #pers_preview img, #pers_result img { image-rendering: pixelated; }
#pers_preview img, #pers_result img { width: 100%; height: 100%; object-fit: contain; }
#edit_source img, #edit_result img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#edit_mask canvas { image-rendering: pixelated; }
#inspect_image img, #inspect_attention img, #inspect_xt img, #inspect_x0 img, #inspect_decomposition img,
#inspect_branch_gallery img, #inspect_probe img { image-rendering: pixelated; }
#inspect_image img, #inspect_attention img, #inspect_xt img, #inspect_x0 img { width: 100%; height: 100%;
                                                                               object-fit: contain; }
.studio-timeline { display: flex; gap: 2px; margin-bottom: 4px; }
.studio-stage { flex: 1; color: white; border-radius: 4px; padding: 3px; font-size: 0.8em; overflow: hidden;
                text-align: center; min-height: 4.5em; }
.studio-status { padding: 6px 10px; border-radius: 6px; font-size: 0.92em; min-height: 1.6em; }
.studio-ok { background: rgba(34, 160, 80, 0.12); }
.studio-warning { background: rgba(230, 160, 20, 0.18); }
.studio-error { background: rgba(220, 40, 40, 0.15); }
.studio-progress { display: flex; align-items: center; gap: 8px; font-variant-numeric: tabular-nums; }
.studio-progress progress { flex: 1; height: 12px; accent-color: var(--color-accent); }
.studio-details th { text-align: left; padding-right: 10px; white-space: nowrap; }
footer { display: none !important; }
"""


def build_app(model, outputs_dir, *, examples_path=None, controller=None, store=None) -> gr.Blocks:
    """The studio UI for ``model`` saving into ``outputs_dir``.

    ``controller``/``store`` may be passed in (tests); by default an
    :class:`~studio.outputs.OutputStore` on ``outputs_dir`` and a
    ``GenerateController(model, store)`` are created. The store is kept on the
    returned Blocks as ``studio_store`` (close it after the server stops)."""
    from studio.outputs import OutputStore

    if store is None:
        store = OutputStore(Path(outputs_dir))
    if controller is None:
        from studio.controllers.generate import GenerateController

        controller = GenerateController(model, store)
    try:
        presets, presets_error = load_presets(examples_path), None
    except PresetError as e:
        presets, presets_error = [], str(e)
        log.warning("examples not loaded: %s", e)

    generate_handlers = GenerateHandlers(controller, model, presets=presets, presets_error=presets_error)
    history_handlers = HistoryHandlers(store, generate_handlers)
    from studio.controllers.attributes import AttributesController

    attributes_handlers = AttributesHandlers(AttributesController(model, store,
                                                                  directions_root=Path(outputs_dir) / "directions"))

    from studio.controllers.compose import CompositionController

    composition_handlers = CompositionHandlers(CompositionController(model, generator=controller))

    from studio.controllers.edit import EditingController
    from studio.controllers.inspect import InspectionController

    editing_handlers = EditingHandlers(EditingController(model, generator=controller))

    inspection_handlers = InspectionHandlers(InspectionController(model, generator=controller), outputs_dir,
                                             attributes=attributes_handlers.controller)

    from studio.controllers.personalize import PersonalizationController
    from studio.personalization.library import ConceptLibrary

    personal = Path(outputs_dir) / "personalization"
    personalization_handlers = PersonalizationHandlers(
        PersonalizationController(model, generator=controller, checkpoints=personal / "checkpoints"),
        ConceptLibrary(personal / "library"))

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        state = gr.State(SessionState(), delete_callback=SessionState.close)
        name = getattr(model, "name", "model")
        size = getattr(model, "default_size", "?")
        gr.Markdown(f"# {TITLE}\n<small>model **{name}** · {size}×{size} · device {getattr(model, 'device', '?')}"
                    f" · outputs `{Path(outputs_dir)}`</small>", elem_id="header")
        with gr.Tabs(selected=GENERATE_TAB_ID) as tabs:
            with gr.Tab("Generate", id=GENERATE_TAB_ID, elem_id="tab_generate"):
                generate_tab = build_generate_tab(generate_handlers, state)
            with gr.Tab("Attributes", id="attributes", elem_id="tab_attributes"):
                attributes_state = gr.State(AttributesSession(), delete_callback=AttributesSession.close)
                build_attributes_tab(attributes_handlers, attributes_state)
            with gr.Tab("Composition", id="composition", elem_id="tab_composition"):
                composition_state = gr.State(CompositionSession(), delete_callback=CompositionSession.close)
                build_composition_tab(composition_handlers, composition_state)
            with gr.Tab("Editing", id="editing", elem_id="tab_editing"):
                editing_state = gr.State(EditingSession(), delete_callback=EditingSession.close)
                build_editing_tab(editing_handlers, editing_state)
            with gr.Tab("Inspection", id="inspection", elem_id="tab_inspection"):
                inspection_state = gr.State(InspectionSession(), delete_callback=InspectionSession.close)
                build_inspection_tab(inspection_handlers, inspection_state)
            with gr.Tab("Personalization", id="personalization", elem_id="tab_personalization"):
                personalization_state = gr.State(PersonalizationSession(),
                                                 delete_callback=PersonalizationSession.close)
                build_personalization_tab(personalization_handlers, personalization_state)
            with gr.Tab("History", id=HISTORY_TAB_ID, elem_id="tab_history") as history_tab:
                build_history_tab(history_handlers, state, generate_tab, tabs, history_tab)
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.studio_store = store
    demo.studio_controller = controller
    demo.studio_outputs = Path(outputs_dir)
    return demo


def launch_app(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
               auth: tuple[str, str] | None = None, **kwargs):
    """``demo.launch`` with the studio's CSS and its outputs folder servable."""
    outputs = getattr(demo, "studio_outputs", None)
    allowed = [str(Path(outputs).resolve())] if outputs is not None else []
    return demo.launch(server_name=host, server_port=port, share=share, auth=auth, css=CSS,
                       allowed_paths=allowed, show_error=False, footer_links=[], **kwargs)
