"""Computed directions on disk: one safetensors file per (model, attribute definition, subject, method).

Layout: ``<root>/<model weights hash[:16]>/<method>/<attribute>-<subject>-<definition key>.safetensors`` with the
delta as tensor ``delta`` and the definition, subject and method in the file's metadata. Files are written
atomically (temp + rename), so a crash never leaves a half-written direction that a later run would trust.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

METHODS = ("naive", "learned", "learned-images")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:40] or "x"


class DirectionStore:
    """Cache of computed deltas under ``root`` (see module docstring)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, model_hash: str, definition, subject: str, method: str) -> Path:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        name = f"{_slug(definition.name)}-{_slug(subject)}-{definition.key(method)}.safetensors"
        return self.root / str(model_hash)[:16] / method / name

    def load(self, model_hash: str, definition, subject: str, method: str) -> torch.Tensor | None:
        path = self.path(model_hash, definition, subject, method)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path))["delta"]
        except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed, not trusted
            return None

    def save(self, model_hash: str, definition, subject: str, method: str, delta: torch.Tensor,
             extra: dict | None = None) -> Path:
        from safetensors.torch import save

        from studio.controllers.generate import write_atomic

        path = self.path(model_hash, definition, subject, method)
        meta = {"definition": json.dumps(definition.to_json()), "subject": subject, "method": method,
                "model_hash": str(model_hash), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
        write_atomic(path, save({"delta": delta.detach().float().cpu().contiguous()}, metadata=meta))
        return path
