"""How techniques plug into a run.

A technique is a small object handed to :class:`RunHooks`; the engine installs
everything for exactly one run and removes it in ``finally``. Nothing here may
keep a shared model modified after the run.

Roles name the conditionings of a step: ``"uncond"`` (negative prompt),
``"cond"`` (prompt) and ``"extra:0"``, ``"extra:1"``, ... for the prompts a
:class:`GuidanceCombiner` asks for (see :func:`extra_role`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from .request import InvalidRequest, StepEvent


def extra_role(index: int) -> str:
    """Role name of a combiner's ``index``-th extra prompt."""
    return f"extra:{index}"


@runtime_checkable
class EmbeddingEdit(Protocol):
    """Changes the prompt embeddings of one role, possibly per step.

    Prompts are encoded once per run; ``apply`` is called every step on a fresh
    copy of the encoded embeddings ``(batch, tokens, dim)`` and returns the
    tensor to use (same shape). Edits are applied in list order."""

    def apply(self, step: int, num_steps: int, embeds: torch.Tensor, role: str) -> torch.Tensor: ...


@runtime_checkable
class GuidanceCombiner(Protocol):
    """Turns the UNet outputs of all roles into the one prediction the sampler uses.

    ``extra_prompts()`` lists additional prompts (roles ``extra:i``); they are
    encoded with the others and evaluated in the same batched UNet call.
    ``combine`` gets ``{"uncond", "cond", "extra:0", ...}`` -> UNet output
    (epsilon or v, as the model predicts) and returns the guided output.
    Optional ``needs_uncond(cfg) -> bool`` lets a combiner skip the uncond pass. A combiner that defines
    ``combine_step(ctx: StepContext)`` is called with that instead of ``combine`` (it may run the UNet again)."""

    def extra_prompts(self) -> list[str]: ...

    def combine(self, step: int, eps: dict[str, torch.Tensor], cfg: float) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepContext:
    """What a combiner with ``combine_step(ctx)`` sees instead of ``combine``'s arguments: the step's scaled
    model input ``(batch, C, h, w)``, every role's embeddings ``(batch, tokens, dim)`` and UNet output, and
    ``denoise(x, embeds)``, one more UNet evaluation at this step's timestep (for techniques that evaluate
    crops or other inputs, e.g. MultiDiffusion-style regions). Extra evaluations are the technique's cost."""

    step: int
    num_steps: int
    timestep: object
    model_input: torch.Tensor
    eps: dict
    cfg: float
    embeds: dict
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ClassicCFG:
    """Classifier-free guidance: ``uncond + cfg * (cond - uncond)``.

    At ``cfg == 1`` this equals ``cond``, so the uncond pass is skipped (half the
    UNet work, same result as ``StableDiffusionPipeline``). For ``cfg < 1`` the
    formula is applied as written (the pipeline instead ignores guidance there)."""

    def extra_prompts(self) -> list[str]:
        return []

    def needs_uncond(self, cfg: float) -> bool:
        return cfg != 1.0

    def combine(self, step: int, eps: dict[str, torch.Tensor], cfg: float) -> torch.Tensor:
        if "uncond" not in eps:
            return eps["cond"]
        return eps["uncond"] + cfg * (eps["cond"] - eps["uncond"])


class ComposableCFG:
    """Composable diffusion (Liu et al., "Compositional Visual Generation with Composable Diffusion Models",
    2022): ``uncond + cfg * sum_i w_i (cond_i - uncond)`` over the prompt's AND parts.

    ``weights`` maps part roles (``"cond"``, ``"cond:1"``, ...) to ``w_i``; NOT is ``w_i < 0``. Weight 1 is the
    ordinary CFG scale, so a single part of weight 1 is exactly :class:`ClassicCFG`. All parts are evaluated in
    the step's one batched UNet call."""

    def __init__(self, weights: Mapping[str, float]):
        self.weights = dict(weights)

    def extra_prompts(self) -> list[str]:
        return []

    def needs_uncond(self, cfg: float) -> bool:
        return True

    def combine(self, step: int, eps: dict[str, torch.Tensor], cfg: float) -> torch.Tensor:
        uncond = eps["uncond"]
        delta = sum(w * (eps[role] - uncond) for role, w in self.weights.items())
        return uncond + cfg * delta


@runtime_checkable
class LatentEdit(Protocol):
    """Changes the sampler's latents right after step ``step`` (e.g. inpainting: keep the known region on the
    forward-noised original). ``latents`` are in the sampler's own scale; ``scheduler`` has just stepped, so its
    ``timesteps[step + 1]`` is the level the latents are now at (none after the last step: clean latents)."""

    def apply(self, step: int, num_steps: int, latents: torch.Tensor, scheduler) -> torch.Tensor: ...


AttentionSpec = Mapping[str, object] | Callable[[dict], Mapping[str, object]]


@dataclass
class RunHooks:
    """Per-run hooks; all optional.

    * ``embedding_edits``: :class:`EmbeddingEdit` objects, applied every step.
    * ``guidance``: a :class:`GuidanceCombiner` (default :class:`ClassicCFG`).
    * ``attention_processors``: ``{processor name: processor}`` (names as in
      ``unet.attn_processors``; names left out keep their processor) or a
      factory ``f(original_processors: dict) -> dict``. Installed on the shared
      UNet for this run only. A bare processor is not accepted: build a dict.
    * ``step_callbacks``: called with a :class:`StepEvent` after every step.
    * ``latent_edits``: :class:`LatentEdit` objects applied to the latents after every sampler step.
    """

    embedding_edits: list = field(default_factory=list)
    guidance: GuidanceCombiner | None = None
    attention_processors: AttentionSpec | None = None
    step_callbacks: list[Callable[[StepEvent], None]] = field(default_factory=list)
    latent_edits: list = field(default_factory=list)


def check_hooks(hooks: RunHooks) -> None:
    """Reject malformed hooks before any work starts."""
    for edit in hooks.embedding_edits:
        if not callable(getattr(edit, "apply", None)):
            raise InvalidRequest(f"embedding edit {edit!r} has no apply(step, num_steps, embeds, role) method")
    g = hooks.guidance
    if g is not None and not (callable(getattr(g, "combine", None)) and callable(getattr(g, "extra_prompts", None))):
        raise InvalidRequest(f"guidance {g!r} must define extra_prompts() and combine(step, eps, cfg)")
    spec = hooks.attention_processors
    if spec is not None and not isinstance(spec, Mapping) and not callable(spec):
        raise InvalidRequest("attention_processors must be a dict {name: processor} or a factory(original) -> dict")
    for edit in hooks.latent_edits:
        if not callable(getattr(edit, "apply", None)):
            raise InvalidRequest(f"latent edit {edit!r} has no apply(step, num_steps, latents, scheduler) method")
    for cb in hooks.step_callbacks:
        if not callable(cb):
            raise InvalidRequest(f"step callback {cb!r} is not callable")


@contextmanager
def attention_processors_installed(unet, spec: AttentionSpec | None):
    """Install ``spec`` on ``unet`` for the ``with`` body; the original processors
    are always put back, even when the body raises."""
    if spec is None:
        yield
        return
    original = unet.attn_processors
    try:
        replacement = spec if isinstance(spec, Mapping) else spec(dict(original))
        if not isinstance(replacement, Mapping):
            raise InvalidRequest(f"attention processor factory returned {type(replacement).__name__}, not a dict")
        unknown = sorted(set(replacement) - set(original))
        if unknown:
            raise InvalidRequest(f"unknown attention processor names {unknown[:3]}; "
                                 f"valid names look like {next(iter(original), '<none>')!r}")
        unet.set_attn_processor({**original, **replacement})
        yield
    finally:
        unet.set_attn_processor(dict(original))
