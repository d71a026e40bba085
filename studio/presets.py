"""One-click example presets, loaded from JSON and validated on load.

File format (``presets/examples/generate.json``)::

    {
      "version": 1,
      "examples": [
        {"name": "Red circle", "prompt": "a large red circle at the top left on a black background",
         "negative_prompt": "", "sampler": "DPM++ 2M", "steps": 20, "cfg": 3.0, "seed": 42,
         "width": 64, "height": 64, "batch_size": 1}
      ]
    }

``name`` and ``prompt`` are required; every other field is optional and, when
left out, falls back to the model's defaults. Problems raise
:class:`PresetError` naming the file and the field (``examples[2].steps``),
what was wrong and what is allowed.

Size limits here are model-independent (multiples of 8 up to 2048); the
engine checks a preset against the loaded model when it is generated.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from studio.engine import SAMPLERS
from studio.engine.validate import MAX_BATCH, MAX_CFG, MAX_SEED, MAX_SIDE, MAX_STEPS

FORMAT_VERSION = 1
MAX_NAME = 80
MAX_PROMPT_CHARS = 2000


class PresetError(ValueError):
    """A preset file is missing, not JSON, or has a bad field.

    ``path`` is the file; ``field`` the JSON path of the bad field (``None``
    when the problem concerns the whole file)."""

    def __init__(self, path: Path | str, message: str, field: str | None = None):
        self.path = Path(path)
        self.field = field
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Preset:
    """One example. ``None`` fields fall back to the model's defaults."""

    name: str
    prompt: str
    negative_prompt: str | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    batch_size: int | None = None

    def settings(self) -> dict[str, Any]:
        """The generation fields this preset sets (``name`` and ``None`` fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Preset))
REQUIRED: tuple[str, ...] = ("name", "prompt")


def default_examples_path() -> Path:
    """``presets/examples/generate.json`` in the repository."""
    return Path(__file__).resolve().parent.parent / "presets" / "examples" / "generate.json"


# ----------------------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(lo: int, hi: int, extra: str = ""):
    def check(value: Any) -> Any:
        if not _is_int(value) or not lo <= value <= hi:
            raise ValueError(f"must be an integer in {lo}..{hi}{extra}, got {value!r}")
        return value
    return check


def _side(value: Any) -> int:
    if not _is_int(value) or not 8 <= value <= MAX_SIDE or value % 8:
        raise ValueError(f"must be a multiple of 8 in 8..{MAX_SIDE}, got {value!r}")
    return value


def _cfg(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_CFG:
        raise ValueError(f"must be a number in 0..{MAX_CFG:g}, got {value!r}")
    return float(value)


def _text(limit: int, *, non_empty: bool = False):
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__} {value!r}")
        if non_empty and not value.strip():
            raise ValueError("must not be empty")
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters, got {len(value)}")
        return value
    return check


def _prompt_text(*, allow_and: bool):
    """Text that parses in the prompt language (see :mod:`studio.prompting`)."""
    length = _text(MAX_PROMPT_CHARS)

    def check(value: Any) -> str:
        from studio.prompting import parse

        text = length(value)
        parse(text, allow_and=allow_and)  # PromptSyntaxError is a ValueError: its message names the column
        return text
    return check


def _sampler(value: Any) -> str:
    if value not in SAMPLERS:
        raise ValueError(f"unknown sampler {value!r}; allowed: {', '.join(SAMPLERS)}")
    return value


_CHECKS = {
    "name": _text(MAX_NAME, non_empty=True),
    "prompt": _prompt_text(allow_and=True),
    "negative_prompt": _prompt_text(allow_and=False),
    "sampler": _sampler,
    "steps": _int_in(1, MAX_STEPS),
    "cfg": _cfg,
    "seed": _int_in(-1, MAX_SEED, " (-1 = random)"),
    "width": _side,
    "height": _side,
    "batch_size": _int_in(1, MAX_BATCH),
}


# ----------------------------------------------------------------------------- loading


def parse_preset(data: Any, *, path: Path | str = "<preset>", where: str = "preset") -> Preset:
    """Validate one preset object; raise :class:`PresetError` naming ``where.<field>``."""
    if not isinstance(data, dict):
        raise PresetError(path, f"must be an object with keys {', '.join(FIELDS)}, got {type(data).__name__}",
                          where)
    for key in data:
        if key not in _CHECKS:
            raise PresetError(path, f"unknown key; allowed keys: {', '.join(FIELDS)}", f"{where}.{key}")
    for key in REQUIRED:
        if key not in data:
            raise PresetError(path, "is required", f"{where}.{key}")
    values = {}
    for key, value in data.items():
        try:
            values[key] = _CHECKS[key](value)
        except ValueError as e:
            raise PresetError(path, str(e), f"{where}.{key}") from None
    return Preset(**values)


def parse_presets(document: Any, *, path: Path | str = "<presets>") -> list[Preset]:
    """Validate a whole presets document (already decoded from JSON)."""
    if not isinstance(document, dict):
        raise PresetError(path, f"top level must be an object with 'version' and 'examples', "
                                f"got {type(document).__name__}")
    for key in document:
        if key not in ("version", "examples"):
            raise PresetError(path, "unknown key; allowed top-level keys: version, examples", key)
    version = document.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise PresetError(path, f"unsupported version {version!r}; this studio reads version {FORMAT_VERSION}",
                          "version")
    examples = document.get("examples")
    if not isinstance(examples, list):
        raise PresetError(path, f"must be a list of preset objects, got {type(examples).__name__}", "examples")
    presets: list[Preset] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(examples):
        preset = parse_preset(item, path=path, where=f"examples[{i}]")
        if preset.name in seen:
            raise PresetError(path, f"duplicate name {preset.name!r} (also examples[{seen[preset.name]}]); "
                                    "names must be unique", f"examples[{i}].name")
        seen[preset.name] = i
        presets.append(preset)
    return presets


def load_presets(path: Path | str | None = None) -> list[Preset]:
    """Read and validate a presets file (default: :func:`default_examples_path`)."""
    path = Path(path) if path is not None else default_examples_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PresetError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(path, f"cannot read file ({e})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise PresetError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return parse_presets(document, path=path)
