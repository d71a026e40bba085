"""The studio's prompt language (AND/NOT with weights, emphasis, prompt editing, alternation).

:func:`parse` turns text into parts; :func:`schedule` gives each part's weighted chunks per step. The engine
reads every prompt through this package, so every workbench's prompt box speaks the same language.
"""

from .grammar import Alternate, Edit, ParsedPrompt, Part, PromptSyntaxError, Text, Weighted, parse
from .schedule import Chunks, chunks_at, is_unweighted, plain_text, schedule

__all__ = [
    "Alternate", "Chunks", "Edit", "ParsedPrompt", "Part", "PromptSyntaxError", "Text", "Weighted", "chunks_at",
    "is_unweighted", "parse", "plain_text", "schedule",
]
