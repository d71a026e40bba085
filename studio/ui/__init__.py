"""The studio's web UI (Gradio): ``build_app(model, outputs_dir) -> gr.Blocks``.

UI modules only wire widgets to controller calls; per-browser-session state
lives in ``gr.State``; the model is shared read-only.
"""

from .app import CSS, TITLE, build_app, launch_app

__all__ = ["CSS", "TITLE", "build_app", "launch_app"]
