"""Provenance: where, how and with what software an image was made.

Stored next to the :class:`~studio.outputs.settings.GenerationSettings` in
the PNG's ``studio`` JSON chunk.  Library versions are read from installed
package metadata (no heavy imports: torch is never imported here).
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .settings import EMPTY_MAPPING, empty_mapping, freeze_json, thaw_json

#: Distributions whose versions are recorded when installed.
TRACKED_DISTRIBUTIONS: tuple[str, ...] = ("torch", "diffusers", "transformers", "gradio", "pillow", "numpy")
UNKNOWN_VERSION = "unknown"


def utc_now() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    """``2024-05-01T12:00:00.123+00:00`` for an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware, got naive {moment!r}")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def parse_iso(text: str) -> datetime:
    """Parse an ISO timestamp; naive values are taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"created must be an ISO-8601 timestamp, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _studio_version() -> str:
    module = sys.modules.get("studio")
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    for dist in importlib.metadata.packages_distributions().get("studio", []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return UNKNOWN_VERSION


def library_versions() -> dict[str, str]:
    """Versions of python, the studio and the tracked libraries that are installed."""
    versions = {"python": platform.python_version(), "studio": _studio_version()}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed (e.g. gradio on a headless worker): leave out
    return versions


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """How an image was produced, beyond its generation settings.

    ``device`` and ``dtype`` accept torch objects or strings
    (``torch.float16`` is stored as ``"float16"``).  ``created`` is a UTC ISO
    timestamp; when ``None`` the store stamps the save time.  ``extra`` is
    free-form JSON-compatible data (e.g. VAE name, LoRA list).
    """

    model_id: str
    weights_hash: str = ""
    scheduler: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    duration_s: float | None = None
    created: str | None = None
    versions: Mapping[str, str] = field(default_factory=empty_mapping)
    extra: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise ValueError(f"model_id must be a non-empty str, got {self.model_id!r}")
        for name in ("weights_hash", "scheduler"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        object.__setattr__(self, "device", str(self.device))
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        if self.duration_s is not None:
            if isinstance(self.duration_s, bool) or not isinstance(self.duration_s, (int, float)) \
                    or not math.isfinite(self.duration_s) or self.duration_s < 0:
                raise ValueError(f"duration_s must be a finite number >= 0, got {self.duration_s!r}")
            object.__setattr__(self, "duration_s", float(self.duration_s))
        if self.created is not None:
            object.__setattr__(self, "created", iso_utc(parse_iso(self.created)))
        object.__setattr__(self, "versions", freeze_json(self.versions, what="versions"))
        object.__setattr__(self, "extra", freeze_json(self.extra, what="provenance extra"))

    @classmethod
    def collect(
        cls,
        *,
        model_id: str,
        weights_hash: str = "",
        scheduler: str = "",
        device: Any = "cpu",
        dtype: Any = "float32",
        duration_s: float | None = None,
        created: datetime | None = None,
        extra: Mapping[str, Any] = EMPTY_MAPPING,
    ) -> "Provenance":
        """Provenance with library versions and a creation time filled in."""
        return cls(
            model_id=model_id,
            weights_hash=weights_hash,
            scheduler=scheduler,
            device=device,
            dtype=dtype,
            duration_s=duration_s,
            created=iso_utc(created or utc_now()),
            versions=library_versions(),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict (the ``provenance`` part of the PNG chunk)."""
        return {
            "model": {"id": self.model_id, "weights_hash": self.weights_hash},
            "scheduler": self.scheduler,
            "device": self.device,
            "dtype": self.dtype,
            "duration_s": self.duration_s,
            "created": self.created,
            "versions": thaw_json(self.versions),
            "extra": thaw_json(self.extra),
        }
