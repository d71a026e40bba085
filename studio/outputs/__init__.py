"""Outputs that are never lost: metadata, atomic saving and history.

Public API::

    from studio.outputs import (
        GenerationSettings, ParsedSettings, Provenance,
        build_parameters, parse_parameters, read_image_settings,
        OutputStore, SavedOutput, History, HistoryRecord, ReconcileReport,
        MetadataError, StoreError, HistoryError,
    )
"""

from .errors import HistoryError, MetadataError, OutputsError, StoreError
from .history import History, HistoryQuery, HistoryRecord, ReconcileReport
from .metadata import (
    build_parameters, build_studio_chunk, parse_parameters, parse_studio_chunk,
    png_text_chunks, read_image_settings,
)
from .provenance import Provenance, library_versions
from .samplers import KNOWN_SAMPLERS, normalize_sampler, sampler_from_scheduler
from .settings import REQUEST_FIELDS, GenerationSettings, ParsedSettings
from .store import OutputStore, SavedOutput

__all__ = [
    "GenerationSettings", "ParsedSettings", "REQUEST_FIELDS", "Provenance", "library_versions",
    "build_parameters", "parse_parameters", "build_studio_chunk", "parse_studio_chunk",
    "png_text_chunks", "read_image_settings",
    "KNOWN_SAMPLERS", "normalize_sampler", "sampler_from_scheduler",
    "OutputStore", "SavedOutput", "History", "HistoryQuery", "HistoryRecord", "ReconcileReport",
    "OutputsError", "MetadataError", "StoreError", "HistoryError",
]
