"""Request validation: reject bad requests early with a message saying what is allowed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from .request import GenerationRequest, InvalidRequest
from .samplers import SAMPLERS, max_steps

MAX_STEPS = 150
MAX_CFG = 30.0
MAX_BATCH = 16
MAX_SEED = 2**32 - 1
MAX_SIDE = 2048


@dataclass(frozen=True)
class SizeRule:
    """Allowed image sides for a model: multiples of ``multiple`` in ``[minimum, maximum]``.

    ``multiple`` = lcm(8, VAE factor x UNet downsampling), so latents split
    evenly through every UNet level."""

    multiple: int
    minimum: int
    maximum: int


def size_rule(model) -> SizeRule:
    unet_down = 2 ** (len(model.unet.config.block_out_channels) - 1)
    multiple = math.lcm(8, model.vae_scale_factor * unet_down)
    minimum = max(multiple, math.ceil(max(32, model.default_size // 8) / multiple) * multiple)
    maximum = max(minimum, min(MAX_SIDE, 4 * model.default_size) // multiple * multiple)
    return SizeRule(multiple, minimum, maximum)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value, lo: int, hi: int, extra: str = "") -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be an integer in {lo}..{hi}{extra}, got {value!r}", name)


def validate_request(req: GenerationRequest, model) -> None:
    """Raise :class:`InvalidRequest` for the first problem found."""
    if not isinstance(req, GenerationRequest):
        raise InvalidRequest(f"expected a GenerationRequest, got {type(req).__name__}")
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(req, name), str):
            raise InvalidRequest(f"{name} must be a string (may be empty), got {type(getattr(req, name)).__name__}",
                                 name)
    if req.sampler not in SAMPLERS:
        raise InvalidRequest(f"unknown sampler {req.sampler!r}; allowed: {', '.join(SAMPLERS)}", "sampler")
    limit = min(MAX_STEPS, max_steps(model.scheduler_config, req.sampler))
    _check_int("steps", req.steps, 1, limit, f" for sampler {req.sampler}" if limit < MAX_STEPS else "")
    cfg = req.cfg
    if isinstance(cfg, bool) or not isinstance(cfg, Real) or not math.isfinite(cfg) or not 0 <= cfg <= MAX_CFG:
        raise InvalidRequest(f"cfg must be a finite number in 0..{MAX_CFG:g}, got {cfg!r}", "cfg")
    _check_int("seed", req.seed, 0, MAX_SEED)
    _check_int("batch_size", req.batch_size, 1, MAX_BATCH)
    if not isinstance(req.shared_seed, bool):
        raise InvalidRequest(f"shared_seed must be true or false, got {req.shared_seed!r}", "shared_seed")
    rule = size_rule(model)
    for name in ("width", "height"):
        value = getattr(req, name)
        if value is None:
            continue
        if not _is_int(value) or not rule.minimum <= value <= rule.maximum or value % rule.multiple:
            raise InvalidRequest(
                f"{name} must be a multiple of {rule.multiple} in {rule.minimum}..{rule.maximum} for this model "
                f"(multiple of 8 and of VAE x UNet downsampling, so the UNet works), got {value!r}", name)
