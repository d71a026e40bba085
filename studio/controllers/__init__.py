"""Controllers: UI-free application logic shared by the Gradio UI and the CLI.

Each controller takes typed, frozen request dataclasses and returns frozen
outcomes; UIs only translate widgets to requests and outcomes to widgets.
"""

from .generate import (
    DEFAULT_WORKBENCH, RANDOM_SEED, FileSaver, GenerateController, GenerateOutcome, PreviewConfig, Saver,
    model_defaults, resolve_seed, settings_from_image,
)

__all__ = [
    "DEFAULT_WORKBENCH", "RANDOM_SEED", "FileSaver", "GenerateController", "GenerateOutcome", "PreviewConfig",
    "Saver", "model_defaults", "resolve_seed", "settings_from_image",
]
