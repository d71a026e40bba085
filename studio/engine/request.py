"""Value types shared by the engine and its callers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from studio.errors import InvalidRequest

__all__ = ["Cancelled", "CancelToken", "GenerationRequest", "GenerationResult", "InvalidRequest", "StartLatents",
           "StepEvent"]


class Cancelled(Exception):
    """The run was cancelled through its :class:`CancelToken`."""


class CancelToken:
    """Thread-safe cancel flag; the engine checks it before every UNet call."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``width``/``height`` ``None`` mean the model's default size.

    Image ``i`` of a batch uses seed ``(seed + i) % 2**32`` for all its noise, so it
    is the same image that a batch of one with that seed gives. With
    ``shared_seed`` every image uses ``seed``: the same noise for the whole batch,
    so hooks that differ per image (a slider sweep) are compared on one picture."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "DPM++ 2M"
    steps: int = 20
    cfg: float = 7.5
    seed: int = 0
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    shared_seed: bool = False


@dataclass(frozen=True)
class StartLatents:
    """Start a run part-way: ``latents`` are x_t ``(batch, C, h, w)`` at the variance-preserving scale the UNet
    sees (a :class:`StepEvent`'s ``model_input``, or ``sqrt(abar) x0 + sqrt(1 - abar) noise``) and the run begins
    at step ``step`` of the request's schedule. The engine converts them to the sampler's own scale, so the latents
    of one sampler can continue under another (branching with a changed sampler; img2img)."""

    latents: torch.Tensor
    step: int


@dataclass
class StepEvent:
    """What a step callback sees after denoising step ``step`` (0-based).

    ``latents`` is x_t, the sampler's latents *entering* this step; ``x0_pred`` is
    the guided prediction of the clean latents in UNet space (decode with
    ``vae.decode(x0 / scaling_factor)``). ``eps_uncond``/``eps_cond`` are the raw UNet
    outputs for the negative and positive prompt (epsilon or v, per the model's
    ``prediction_type``); ``eps_uncond`` is ``None`` when the uncond pass was skipped.
    ``eps`` holds every role's output (``extra:i`` for a combiner's extra prompts). ``model_input`` is x_t as the
    UNet saw it (variance-preserving scale for every sampler), ``guided`` the combined output the sampler stepped
    with, ``alpha_bar`` the signal variance of ``model_input``."""

    step: int
    num_steps: int
    timestep: int
    latents: torch.Tensor
    x0_pred: torch.Tensor
    eps_uncond: torch.Tensor | None
    eps_cond: torch.Tensor | None
    eps: dict[str, torch.Tensor] = field(default_factory=dict)
    model_input: torch.Tensor | None = None
    guided: torch.Tensor | None = None
    alpha_bar: float | None = None


@dataclass
class GenerationResult:
    """A finished run. ``latents`` are the final UNet-space latents; ``timings`` in
    seconds (encode, denoise, decode, total, per_step)."""

    images: list
    latents: torch.Tensor
    request: GenerationRequest
    seeds: list[int]
    timings: dict[str, float]
    warnings: list[str]
