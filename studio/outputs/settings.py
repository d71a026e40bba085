"""Typed, frozen records of what produced an image.

* :class:`GenerationSettings` - the complete, validated settings the studio
  used for one image.  This is what gets written into PNGs and history rows.
* :class:`ParsedSettings` - what could be read back from a PNG or a pasted
  A1111 ``parameters`` text.  Fields may be missing (``None``); unknown A1111
  keys are kept verbatim in ``extra``.

Mappings inside the records (``controls``, ``extra``) are deep-frozen
(read-only mapping proxies and tuples) so the records really are immutable.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .errors import MetadataError
from .samplers import normalize_sampler

EMPTY_MAPPING: Mapping[str, Any] = MappingProxyType({})


def empty_mapping() -> Mapping[str, Any]:
    """Default factory for read-only mapping fields."""
    return EMPTY_MAPPING

#: Fields a generation request needs; see :meth:`ParsedSettings.request_fields`.
REQUEST_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "sampler", "steps", "cfg", "seed", "width", "height",
)

#: Keys the A1111 ``parameters`` line uses for GenerationSettings fields.
#: They cannot be used as keys of ``GenerationSettings.extra``.
RESERVED_PARAMETER_KEYS: frozenset[str] = frozenset({
    "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "Batch size", "Batch pos", "Workbench", "Controls",
})

MAX_SEED = 2**64 - 1
DEFAULT_WORKBENCH = "txt2img"

# A1111 key syntax (see its infotext regex): word char, then words/space/-/.
_EXTRA_KEY_RE = re.compile(r"\w[\w \-/]*\w|\w")


# --- freezing helpers -------------------------------------------------------

def freeze_json(value: Any, *, what: str) -> Any:
    """Deep-copy a JSON-compatible value into read-only form.

    Dicts become ``MappingProxyType``, lists become tuples.  Raises
    ``ValueError`` naming *what* if the value is not JSON-serialisable.
    """
    try:
        text = json.dumps(thaw_json(value, what=what), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what} must be JSON-compatible (str keys; str, int, float, bool, None, "
            f"list or dict values; no NaN): {exc}"
        ) from None
    return _freeze(json.loads(text))


def thaw_json(value: Any, *, what: str = "value") -> Any:
    """Inverse of :func:`freeze_json`: plain dicts and lists, ready for json.dumps."""
    if isinstance(value, Mapping):
        thawed = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{what} has a non-str key {key!r}")
            thawed[key] = thaw_json(item, what=what)
        return thawed
    if isinstance(value, (list, tuple)):
        return [thaw_json(item, what=what) for item in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


# --- field validators -------------------------------------------------------

def _require_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}: {value!r}")
    return value


def _require_int(name: str, value: Any, *, minimum: int, maximum: int | None = None,
                 hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}" + (f"; {hint}" if hint else ""))
    return value


def _require_float(name: str, value: Any, *, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return number


def _freeze_extra(extra: Mapping[str, str]) -> Mapping[str, str]:
    if not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a mapping of str to str, got {type(extra).__name__}")
    frozen: dict[str, str] = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not _EXTRA_KEY_RE.fullmatch(key):
            raise ValueError(
                f"extra key {key!r} is not a valid A1111 parameter name "
                "(letters, digits, '_', ' ', '-', '/'; no ':' or ',')"
            )
        if key in RESERVED_PARAMETER_KEYS:
            raise ValueError(f"extra key {key!r} is reserved; set the matching field instead")
        frozen[key] = _require_str(f"extra[{key!r}]", value)
    return MappingProxyType(frozen)


# --- records ----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class GenerationSettings:
    """Everything needed to reproduce (and describe) one generated image.

    ``sampler`` uses A1111 names ("DPM++ 2M Karras"); aliases such as
    ``dpmpp_2m_karras`` are normalised.  ``seed`` must be the concrete seed
    used (resolve "random" / -1 before recording).  ``controls`` is the
    workbench's free-form, JSON-compatible control settings; ``extra`` holds
    additional A1111 ``parameters`` keys (e.g. ``{"Clip skip": "2"}``).
    """

    prompt: str
    negative_prompt: str = ""
    sampler: str
    steps: int
    cfg: float
    seed: int
    width: int
    height: int
    batch_size: int = 1
    batch_index: int = 0
    model_name: str
    model_hash: str = ""
    workbench: str = DEFAULT_WORKBENCH
    controls: Mapping[str, Any] = field(default_factory=empty_mapping)
    extra: Mapping[str, str] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        _require_str("prompt", self.prompt)
        _require_str("negative_prompt", self.negative_prompt)
        sampler = _require_str("sampler", self.sampler)
        if not sampler.strip():
            raise ValueError("sampler must not be empty (e.g. 'DPM++ 2M', 'Euler a')")
        object.__setattr__(self, "sampler", normalize_sampler(sampler))
        _require_int("steps", self.steps, minimum=1)
        object.__setattr__(self, "cfg", _require_float("cfg", self.cfg, minimum=0.0))
        _require_int("seed", self.seed, minimum=0, maximum=MAX_SEED,
                     hint="record the concrete seed used: resolve a random seed (-1) first")
        _require_int("width", self.width, minimum=1)
        _require_int("height", self.height, minimum=1)
        _require_int("batch_size", self.batch_size, minimum=1)
        _require_int("batch_index", self.batch_index, minimum=0, maximum=self.batch_size - 1)
        if not _require_str("model_name", self.model_name).strip():
            raise ValueError("model_name must not be empty")
        _require_str("model_hash", self.model_hash)
        if not _require_str("workbench", self.workbench).strip():
            raise ValueError("workbench must not be empty (e.g. 'txt2img')")
        if not isinstance(self.controls, Mapping):
            raise TypeError(f"controls must be a mapping, got {type(self.controls).__name__}")
        object.__setattr__(self, "controls", freeze_json(self.controls, what="controls"))
        object.__setattr__(self, "extra", _freeze_extra(self.extra))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (the ``settings`` part of the PNG chunk)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "sampler": self.sampler,
            "steps": self.steps,
            "cfg": self.cfg,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "batch_size": self.batch_size,
            "batch_index": self.batch_index,
            "model_name": self.model_name,
            "model_hash": self.model_hash,
            "workbench": self.workbench,
            "controls": thaw_json(self.controls),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_request(
        cls,
        request: Any,
        *,
        seed: int,
        width: int,
        height: int,
        model_name: str,
        batch_index: int = 0,
        **fields: Any,
    ) -> "GenerationSettings":
        """Settings of image *batch_index* of an engine ``GenerationRequest``.

        *seed*, *width* and *height* are the concrete values the engine used
        for that image (the request may hold ``None`` sizes); other fields
        (``model_hash``, ``workbench``, ``controls``, ``extra``) go in *fields*.
        """
        return cls(
            prompt=request.prompt, negative_prompt=request.negative_prompt,
            sampler=request.sampler, steps=request.steps, cfg=request.cfg,
            seed=seed, width=width, height=height,
            batch_size=getattr(request, "batch_size", 1), batch_index=batch_index,
            model_name=model_name, **fields,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationSettings":
        """Rebuild settings from :meth:`to_dict` output; unknown keys are ignored.

        Raises :class:`MetadataError` if required keys are missing or invalid.
        """
        if not isinstance(data, Mapping):
            raise MetadataError(f"settings must be a JSON object, got {type(data).__name__}")
        names = [f for f in cls.__dataclass_fields__ if f in data]
        try:
            return cls(**{name: data[name] for name in names})
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"invalid studio settings: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class ParsedSettings:
    """Settings read back from a PNG or an A1111 ``parameters`` text.

    Values that were absent or unreadable are ``None`` (unreadable raw text
    stays in ``extra`` under its A1111 key).  ``extra`` also keeps every key
    the studio does not model ("Clip skip", "Batch size", "Lora hashes", ...).
    ``source`` is ``"studio"`` (JSON chunk) or ``"parameters"`` (A1111 text);
    ``provenance`` is the studio JSON provenance when available.  Neither
    takes part in equality.
    """

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model_name: str | None = None
    model_hash: str | None = None
    workbench: str | None = None
    controls: Mapping[str, Any] = field(default_factory=empty_mapping)
    extra: Mapping[str, str] = field(default_factory=empty_mapping)
    source: str = field(default="parameters", compare=False)
    provenance: Mapping[str, Any] = field(default_factory=empty_mapping, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "controls", freeze_json(self.controls, what="controls"))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))
        object.__setattr__(self, "provenance", freeze_json(self.provenance, what="provenance"))

    @classmethod
    def from_settings(
        cls,
        settings: GenerationSettings,
        *,
        source: str = "studio",
        provenance: Mapping[str, Any] = EMPTY_MAPPING,
    ) -> "ParsedSettings":
        """The ParsedSettings that parsing ``build_parameters(settings)`` yields."""
        extra = dict(settings.extra)
        if settings.batch_size > 1:
            extra["Batch size"] = str(settings.batch_size)
            extra["Batch pos"] = str(settings.batch_index)
        return cls(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            sampler=settings.sampler,
            steps=settings.steps,
            cfg=settings.cfg,
            seed=settings.seed,
            width=settings.width,
            height=settings.height,
            model_name=settings.model_name,
            model_hash=settings.model_hash or None,  # the text omits an empty hash
            workbench=settings.workbench,
            controls=settings.controls,
            extra=extra,
            source=source,
            provenance=provenance,
        )

    @property
    def missing_request_fields(self) -> tuple[str, ...]:
        """Names of request fields that could not be read."""
        return tuple(name for name in REQUEST_FIELDS if getattr(self, name) is None)

    def request_fields(self) -> dict[str, Any]:
        """Known fields of a generation request, ready for ``replace(request, **...)``.

        Keys are a subset of :data:`REQUEST_FIELDS`; fields that could not be
        read are left out so the caller's defaults stay in place.
        """
        values = {name: getattr(self, name) for name in REQUEST_FIELDS}
        return {name: value for name, value in values.items() if value is not None}

    def to_generation_settings(self, **overrides: Any) -> GenerationSettings:
        """Full :class:`GenerationSettings`; *overrides* fill or replace fields.

        "Batch size" / "Batch pos" in ``extra`` become ``batch_size`` /
        ``batch_index``.  Raises :class:`MetadataError` naming the fields that
        are still missing.
        """
        # 1. start from what was read
        extra = dict(self.extra)
        values: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "sampler": self.sampler,
            "steps": self.steps,
            "cfg": self.cfg,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "model_name": self.model_name,
            "model_hash": self.model_hash or "",
            "workbench": self.workbench or DEFAULT_WORKBENCH,
            "controls": self.controls,
        }
        # 2. batch position lives in extra, like A1111 writes it
        batch_size, batch_pos = extra.pop("Batch size", None), extra.pop("Batch pos", None)
        if batch_size is not None and batch_size.strip().isdigit():
            values["batch_size"] = int(batch_size)
            if batch_pos is not None and batch_pos.strip().isdigit():
                values["batch_index"] = int(batch_pos)
        values["extra"] = {k: v for k, v in extra.items() if k not in RESERVED_PARAMETER_KEYS}
        # 3. apply overrides, then check completeness
        values.update(overrides)
        missing = sorted(name for name, value in values.items() if value is None)
        if missing:
            raise MetadataError(
                f"cannot build GenerationSettings: missing {', '.join(missing)}; "
                "pass them as keyword overrides"
            )
        try:
            return GenerationSettings(**values)
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"cannot build GenerationSettings: {exc}") from None
