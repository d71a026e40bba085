"""Attribute definitions: what a slider means, as data (``presets/attributes/<model kind>.json``).

File format::

    {
      "version": 1,
      "model": "tinyworld",                  # or "sd1", "sd2": which models the file is for
      "templates": ["{phrase}", "a small blue square and {phrase}"],
      "attributes": [
        {"name": "size", "subject": "circle", "positive": "a huge {subject}", "negative": "a tiny {subject}",
         "range": 2.0, "description": "tiny to huge"}
      ]
    }

``positive``/``negative`` are phrasings with a ``{subject}`` slot; the subject is the default subject word (the
UI and CLI may aim the slider at another word: the direction is then computed for that word). ``templates``
(with a ``{phrase}`` slot) are the contexts the optimization-free direction is averaged over; an attribute may
carry its own ``templates``. ``range`` is the slider's maximum magnitude. An attribute may also say how to draw
example pictures for any value (``"examples"``, see :mod:`studio.attributes.examples`), which the
``learned-images`` method learns from.
Bad files raise :class:`~studio.presets.PresetError` naming the file and field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from studio.attributes.examples import ExampleSpec
from studio.presets import PresetError

FORMAT_VERSION = 1
MODEL_KINDS = ("tinyworld", "sd1", "sd2")
MAX_RANGE = 20.0
MAX_TEXT = 200


@dataclass(frozen=True)
class AttributeDefinition:
    """One slider's meaning. ``key()`` identifies it for the direction cache."""

    name: str
    subject: str
    positive: str
    negative: str
    range: float = 2.0
    templates: tuple[str, ...] = ("{phrase}",)
    description: str = ""
    examples: ExampleSpec | None = None

    def __post_init__(self):
        for field in ("name", "subject", "positive", "negative"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{field} must be a non-empty string, got {value!r}")
            if len(value) > MAX_TEXT:
                raise ValueError(f"{field} must be at most {MAX_TEXT} characters, got {len(value)}")
        for field in ("positive", "negative"):
            if "{subject}" not in getattr(self, field):
                raise ValueError(f"{field} must contain the slot {{subject}} (e.g. 'a huge {{subject}}'), "
                                 f"got {getattr(self, field)!r}")
        if self.positive == self.negative:
            raise ValueError("positive and negative phrasings must differ")
        r = self.range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 < r <= MAX_RANGE:
            raise ValueError(f"range must be a number in (0, {MAX_RANGE:g}], got {r!r}")
        if not self.templates or not all(isinstance(t, str) and "{phrase}" in t for t in self.templates):
            raise ValueError("templates must be a non-empty list of strings with a {phrase} slot")
        if self.examples is not None:
            if not isinstance(self.examples, ExampleSpec):
                raise ValueError(f"examples must be an ExampleSpec, got {type(self.examples).__name__}")
            lo, hi = self.examples.span
            if lo > -self.range + 1e-9 or hi < self.range - 1e-9:
                raise ValueError(f"examples.points must cover the slider's range [-{self.range:g}, {self.range:g}]"
                                 f", they cover [{lo:g}, {hi:g}]")

    def key(self, method: str = "naive") -> str:
        """Short hash of what determines the direction (not the name, range or description); a direction learned
        from example images also depends on the examples."""
        core = {"positive": self.positive, "negative": self.negative, "templates": list(self.templates)}
        if method == "learned-images" and self.examples is not None:
            core["examples"] = self.examples.to_json()
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["templates"] = list(self.templates)
        data["examples"] = self.examples.to_json() if self.examples is not None else None
        return data


def presets_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "presets" / "attributes"


def model_kind(model) -> str:
    """``"tinyworld"`` for our exported Tiny World folders (they carry ``latent_stats.safetensors``), else the
    model's family (``"sd1"``/``"sd2"``)."""
    source = getattr(model, "source_path", None)
    if source and (Path(source) / "latent_stats.safetensors").is_file():
        return "tinyworld"
    return str(getattr(model, "family", "sd1"))


def parse_definitions(document: Any, *, path: Path | str = "<attributes>") -> tuple[str, list[AttributeDefinition]]:
    """Validate a definitions document; returns ``(model kind, definitions)``."""
    if not isinstance(document, dict):
        raise PresetError(path, "top level must be an object with version, model, templates, attributes")
    allowed = {"version", "model", "templates", "attributes"}
    for key in document:
        if key not in allowed:
            raise PresetError(path, f"unknown key; allowed top-level keys: {', '.join(sorted(allowed))}", key)
    if document.get("version") != FORMAT_VERSION:
        raise PresetError(path, f"unsupported version {document.get('version')!r}; this studio reads "
                                f"version {FORMAT_VERSION}", "version")
    kind = document.get("model")
    if kind not in MODEL_KINDS:
        raise PresetError(path, f"must be one of {', '.join(MODEL_KINDS)}, got {kind!r}", "model")
    templates = document.get("templates", ["{phrase}"])
    if not isinstance(templates, list):
        raise PresetError(path, "must be a list of strings with a {phrase} slot", "templates")
    items = document.get("attributes")
    if not isinstance(items, list) or not items:
        raise PresetError(path, "must be a non-empty list of attribute objects", "attributes")
    fields = {"name", "subject", "positive", "negative", "range", "templates", "description", "examples"}
    out: list[AttributeDefinition] = []
    for i, item in enumerate(items):
        where = f"attributes[{i}]"
        if not isinstance(item, dict):
            raise PresetError(path, f"must be an object, got {type(item).__name__}", where)
        for key in item:
            if key not in fields:
                raise PresetError(path, f"unknown key; allowed: {', '.join(sorted(fields))}", f"{where}.{key}")
        for key in ("name", "subject", "positive", "negative"):
            if key not in item:
                raise PresetError(path, "is required", f"{where}.{key}")
        own = item.get("templates", templates)
        if not isinstance(own, list):
            raise PresetError(path, "must be a list of strings with a {phrase} slot", f"{where}.templates")
        try:
            examples = ExampleSpec.from_json(item["examples"]) if "examples" in item else None
            definition = AttributeDefinition(**{**item, "templates": tuple(own), "examples": examples})
        except (TypeError, ValueError) as e:
            raise PresetError(path, str(e), where) from None
        if any(d.name == definition.name for d in out):
            raise PresetError(path, f"duplicate name {definition.name!r}; names must be unique", f"{where}.name")
        out.append(definition)
    return kind, out


def load_definitions(path: Path | str) -> tuple[str, list[AttributeDefinition]]:
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PresetError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(path, f"cannot read file ({e})") from None
    except json.JSONDecodeError as e:
        raise PresetError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return parse_definitions(document, path=path)


def definitions_for(model, folder: Path | None = None) -> list[AttributeDefinition]:
    """The shipped definitions for ``model``'s kind (every file in ``folder`` whose ``model`` matches)."""
    kind = model_kind(model)
    found: list[AttributeDefinition] = []
    for path in sorted((folder or presets_dir()).glob("*.json")):
        file_kind, definitions = load_definitions(path)
        if file_kind == kind:
            found += [d for d in definitions if all(d.name != f.name for f in found)]
    return found
