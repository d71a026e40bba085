"""Generation metadata: A1111 ``parameters`` text and the studio JSON chunk.

A studio PNG carries two text chunks:

* ``parameters`` - A1111-compatible text (see :mod:`.parameters`), readable by
  A1111, Civitai, and other tools;
* ``studio`` - JSON ``{"format": "studio.output", "version": 1,
  "settings": {...GenerationSettings...}, "provenance": {...}}`` with the
  complete settings (controls included) and provenance (model id and weights
  hash, scheduler, device, dtype, library versions, created, duration).

:func:`read_image_settings` prefers the JSON chunk and falls back to the text.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .errors import MetadataError
from .parameters import build_parameters, parse_parameters
from .pngio import ImageSource, read_image_text
from .provenance import Provenance
from .settings import GenerationSettings, ParsedSettings, freeze_json, thaw_json

__all__ = [
    "STUDIO_KEY", "PARAMETERS_KEY", "STUDIO_FORMAT", "ACCEPTED_IMAGES",
    "build_parameters", "parse_parameters", "build_studio_chunk", "parse_studio_chunk",
    "png_text_chunks", "provenance_dict", "read_image_settings", "MetadataError",
]

STUDIO_KEY = "studio"
PARAMETERS_KEY = "parameters"
STUDIO_FORMAT = "studio.output"
STUDIO_FORMAT_VERSION = 1
ACCEPTED_IMAGES = (
    "accepted: a PNG saved by the studio (JSON 'studio' text chunk) or by "
    "AUTOMATIC1111-compatible tools ('parameters' text chunk)"
)


def provenance_dict(provenance: Provenance | Mapping[str, Any]) -> dict[str, Any]:
    """Plain JSON-compatible dict for a :class:`Provenance` or a mapping."""
    if isinstance(provenance, Provenance):
        return provenance.to_dict()
    if not isinstance(provenance, Mapping):
        raise TypeError(f"provenance must be a Provenance or a mapping, got {type(provenance).__name__}")
    return thaw_json(freeze_json(provenance, what="provenance"))


def build_studio_chunk(settings: GenerationSettings, provenance: Provenance | Mapping[str, Any]) -> str:
    """JSON text of the ``studio`` chunk (ASCII-only, so it is valid tEXt/zTXt)."""
    document = {
        "format": STUDIO_FORMAT,
        "version": STUDIO_FORMAT_VERSION,
        "settings": settings.to_dict(),
        "provenance": provenance_dict(provenance),
    }
    return json.dumps(document, ensure_ascii=True, allow_nan=False)


def parse_studio_chunk(text: str) -> ParsedSettings:
    """ParsedSettings (``source="studio"``) from a ``studio`` JSON chunk."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise MetadataError(f"the 'studio' chunk is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != STUDIO_FORMAT:
        raise MetadataError(f"the 'studio' chunk is not a {STUDIO_FORMAT!r} document")
    settings = GenerationSettings.from_dict(document.get("settings"))
    provenance = document.get("provenance")
    return ParsedSettings.from_settings(
        settings, source="studio", provenance=provenance if isinstance(provenance, dict) else {},
    )


def png_text_chunks(settings: GenerationSettings, provenance: Provenance | Mapping[str, Any]) -> dict[str, str]:
    """Both text chunks for a studio PNG: ``parameters`` and ``studio``."""
    return {
        PARAMETERS_KEY: build_parameters(settings),
        STUDIO_KEY: build_studio_chunk(settings, provenance),
    }


def read_image_settings(source: ImageSource) -> ParsedSettings:
    """Settings embedded in an image (path, bytes, binary file or PIL image).

    Prefers the studio JSON chunk; falls back to A1111 ``parameters`` text
    (also used when the JSON chunk is damaged).  Raises
    :class:`MetadataError` for non-images, truncated/corrupt files and images
    carrying neither chunk.
    """
    # 1. read and check the image, collect its text chunks
    text = read_image_text(source, accepted=ACCEPTED_IMAGES)

    # 2. the studio JSON chunk is complete: prefer it
    chunk_error: MetadataError | None = None
    if STUDIO_KEY in text:
        try:
            return parse_studio_chunk(text[STUDIO_KEY])
        except MetadataError as exc:
            chunk_error = exc

    # 3. A1111 text
    if PARAMETERS_KEY in text:
        return parse_parameters(text[PARAMETERS_KEY])
    if chunk_error is not None:
        raise MetadataError(f"{chunk_error}; no 'parameters' text to fall back on") from None
    raise MetadataError(f"image has no generation metadata; {ACCEPTED_IMAGES}")
