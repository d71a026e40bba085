"""AUTOMATIC1111-compatible ``parameters`` text (PNG "infotext").

Format, as A1111 writes it::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt, possibly several lines>
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 64x64, ...

The last line is a comma-separated list of ``Key: value`` pairs.  Values
containing ``,``, ``:`` or a newline are written as JSON strings
(``Lora hashes: "a: 1234, b: 5678"``), exactly like A1111's ``quote()``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import MetadataError
from .samplers import fold_schedule_type, normalize_sampler
from .settings import GenerationSettings, ParsedSettings, freeze_json, thaw_json

NEGATIVE_PREFIX = "Negative prompt:"

# Same grammar as A1111's infotext parser: "Key: value" or 'Key: "json string"'.
_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
# A line is a parameters line only if it has at least one of these keys.
_CORE_KEYS = frozenset({"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model", "Model hash"})
_EXAMPLE = "'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512'"


# --- value quoting ----------------------------------------------------------

def quote_value(value: str) -> str:
    """Quote like A1111: JSON string if the value would break the line grammar."""
    needs_quotes = (
        any(ch in value for ch in ",:\n\r")
        or value.startswith('"')
        or value != value.strip()
    )
    return json.dumps(value, ensure_ascii=False) if needs_quotes else value


def unquote_value(raw: str) -> str:
    """Inverse of :func:`quote_value`; malformed quoted text is returned as-is."""
    raw = raw.strip()
    if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return value if isinstance(value, str) else raw
    return raw


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --- building ---------------------------------------------------------------

def build_parameters(settings: GenerationSettings) -> str:
    """A1111-compatible ``parameters`` text for *settings*.

    Key order follows A1111: Steps, Sampler, CFG scale, Seed, Size, Model
    hash, Model, then Batch size/pos (batches only), the studio's Workbench
    and Controls (JSON), then ``settings.extra`` in insertion order.
    """
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"expected GenerationSettings, got {type(settings).__name__}")
    pairs: list[tuple[str, str]] = [
        ("Steps", str(settings.steps)),
        ("Sampler", settings.sampler),
        ("CFG scale", _format_number(settings.cfg)),
        ("Seed", str(settings.seed)),
        ("Size", f"{settings.width}x{settings.height}"),
    ]
    if settings.model_hash:
        pairs.append(("Model hash", settings.model_hash))
    pairs.append(("Model", settings.model_name))
    if settings.batch_size > 1:
        pairs += [("Batch size", str(settings.batch_size)), ("Batch pos", str(settings.batch_index))]
    pairs.append(("Workbench", settings.workbench))
    if settings.controls:
        controls_json = json.dumps(thaw_json(settings.controls), ensure_ascii=False, sort_keys=True)
        pairs.append(("Controls", controls_json))
    pairs += list(settings.extra.items())

    lines = [settings.prompt]
    if settings.negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {settings.negative_prompt}")
    lines.append(", ".join(f"{key}: {quote_value(value)}" for key, value in pairs))
    return "\n".join(lines)


# --- parsing ----------------------------------------------------------------

def _check_text(text: Any) -> str:
    if not isinstance(text, str):
        raise TypeError(f"parameters text must be a str, got {type(text).__name__}")
    if "\x00" in text:
        raise MetadataError("parameters text contains NUL bytes: this looks like binary data, not text")
    stripped = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not stripped:
        raise MetadataError(f"parameters text is empty; expected a prompt and a line like {_EXAMPLE}")
    return stripped


def _split_param_pairs(line: str) -> list[tuple[str, str]]:
    return [(key.strip(), unquote_value(raw)) for key, raw in _PARAM_RE.findall(line)]


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.lstrip().startswith(NEGATIVE_PREFIX):
            negative_lines = [line.lstrip()[len(NEGATIVE_PREFIX):].lstrip()]
        elif negative_lines is None:
            prompt_lines.append(line)
        else:
            negative_lines.append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines or [])


def _parse_int(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _parse_float(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_parameters(text: str) -> ParsedSettings:
    """Parse studio or A1111 ``parameters`` text.

    Tolerant of odd but readable text: unknown keys go to ``extra``,
    unreadable values (``Steps: many``) stay in ``extra`` and the field is
    ``None``; a missing negative prompt gives ``""``.  ``Schedule type:
    Karras`` is folded into the sampler name.  Raises :class:`MetadataError`
    when the text has no parameters line at all (empty text, binary data, a
    bare prompt, JSON, ...).
    """
    # 1. validate and locate the parameters line (always the last line)
    lines = _check_text(text).split("\n")
    pairs = _split_param_pairs(lines[-1])
    if not any(key in _CORE_KEYS for key, _ in pairs):
        raise MetadataError(
            "not a generation parameters text: its last line should be like "
            f"{_EXAMPLE} (AUTOMATIC1111 'parameters' format)"
        )

    # 2. prompt and negative prompt from the lines above it
    prompt, negative = _split_prompts(lines[:-1])

    # 3. interpret known keys; everything else (and unreadable values) -> extra
    extra: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, value in pairs:
        extra[key] = value
    numeric = (("Steps", "steps", _parse_int), ("Seed", "seed", _parse_int),
               ("CFG scale", "cfg", _parse_float))
    for key, name, parse in numeric:
        if key in extra and (number := parse(extra[key])) is not None:
            values[name] = number
            del extra[key]
    if "Size" in extra and (size := _SIZE_RE.match(extra["Size"])):
        values["width"], values["height"] = int(size.group(1)), int(size.group(2))
        del extra["Size"]
    for key, name in (("Model", "model_name"), ("Model hash", "model_hash"), ("Workbench", "workbench")):
        if key in extra:
            values[name] = extra.pop(key)
    if "Controls" in extra:
        try:
            controls = json.loads(extra["Controls"])
            if isinstance(controls, dict):
                values["controls"] = freeze_json(controls, what="Controls")
                del extra["Controls"]
        except ValueError:
            pass  # unreadable: stays in extra verbatim

    # 4. sampler, with A1111 >= 1.9 "Schedule type" folded in
    if "Sampler" in extra:
        sampler, folded = fold_schedule_type(extra.pop("Sampler"), extra.get("Schedule type"))
        values["sampler"] = normalize_sampler(sampler)
        if folded:
            del extra["Schedule type"]

    return ParsedSettings(prompt=prompt, negative_prompt=negative, extra=extra,
                          source="parameters", **values)
