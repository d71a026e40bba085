"""Sampler names in AUTOMATIC1111 (A1111) spelling.

The studio records samplers the way A1111 displays them ("DPM++ 2M Karras",
"Euler a", ...), so its PNGs can be read by A1111-compatible tools and A1111
PNGs can be re-used here.  :func:`normalize_sampler` maps common aliases
(``dpmpp_2m_karras``, ``euler_ancestral``, diffusers scheduler names) to that
spelling and leaves unknown names untouched.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

# (A1111 display name, aliases).  Aliases are compared after _alias_key().
_SAMPLER_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("DPM++ 2M", ("dpmpp 2m", "dpm++2m", "dpmsolvermultistep", "dpmsolvermultistepscheduler")),
    ("DPM++ 2M Karras", ("dpmpp 2m karras", "dpm++2m karras")),
    ("DPM++ 2M SDE", ("dpmpp 2m sde",)),
    ("DPM++ 2M SDE Karras", ("dpmpp 2m sde karras",)),
    ("DPM++ SDE", ("dpmpp sde",)),
    ("DPM++ SDE Karras", ("dpmpp sde karras",)),
    ("Euler", ("euler discrete", "eulerdiscrete", "eulerdiscretescheduler")),
    (
        "Euler a",
        ("euler ancestral", "euler a", "eulerancestral", "eulerancestraldiscrete",
         "eulerancestraldiscretescheduler", "euler ancestral discrete"),
    ),
    ("Heun", ("heundiscrete", "heundiscretescheduler")),
    ("LMS", ("lmsdiscrete", "lmsdiscretescheduler")),
    ("LMS Karras", ()),
    ("DDIM", ("ddimscheduler",)),
    ("PLMS", ("pndm", "pndmscheduler")),
    ("UniPC", ("unipc multistep", "unipcmultistep", "unipcmultistepscheduler")),
    ("LCM", ("lcmscheduler",)),
)

KNOWN_SAMPLERS: tuple[str, ...] = tuple(name for name, _ in _SAMPLER_TABLE)


def _alias_key(name: str) -> str:
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    key = key.replace("dpmpp", "dpm++")
    key = re.sub(r"dpm\+\+(?=\d)", "dpm++ ", key)
    return re.sub(r"\s+", " ", key)


def _build_aliases() -> Mapping[str, str]:
    table: dict[str, str] = {}
    for canonical, aliases in _SAMPLER_TABLE:
        for alias in (canonical, *aliases):
            table[_alias_key(alias)] = canonical
    return MappingProxyType(table)


_ALIASES: Mapping[str, str] = _build_aliases()


def normalize_sampler(name: str) -> str:
    """Return the A1111 spelling of *name*; unknown names are returned stripped.

    >>> normalize_sampler("dpmpp_2m_karras")
    'DPM++ 2M Karras'
    >>> normalize_sampler("My Custom Sampler")
    'My Custom Sampler'
    """
    if not isinstance(name, str):
        raise TypeError(f"sampler name must be a str, got {type(name).__name__}")
    return _ALIASES.get(_alias_key(name), name.strip())


def sampler_from_scheduler(class_name: str, *, karras: bool = False) -> str:
    """A1111 sampler name for a diffusers scheduler class name.

    ``sampler_from_scheduler("DPMSolverMultistepScheduler", karras=True)``
    gives ``"DPM++ 2M Karras"``.  Unknown classes are returned unchanged.
    """
    base = normalize_sampler(class_name)
    if karras and base in KNOWN_SAMPLERS and not base.endswith("Karras"):
        with_karras = f"{base} Karras"
        return with_karras if with_karras in KNOWN_SAMPLERS else base
    return base


def fold_schedule_type(sampler: str, schedule_type: str | None) -> tuple[str, bool]:
    """Combine A1111 >= 1.9 ``Schedule type`` with the sampler name.

    Returns ``(sampler, folded)``; only "Karras" is folded into the name
    ("DPM++ 2M" + "Karras" -> "DPM++ 2M Karras"), because that is the only
    schedule older A1111 versions spelled as part of the sampler.
    """
    if schedule_type is None or schedule_type.strip().lower() != "karras":
        return sampler, False
    if sampler.lower().endswith("karras"):
        return sampler, True
    return f"{sampler} Karras", True
