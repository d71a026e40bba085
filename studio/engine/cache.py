"""Latent cache: record a run's trajectory so a later run can resume from step k.

Each step records x_t (on CPU), the sampler's full state (multistep history
included) and the per-image noise generators' states, so resuming with the same
settings reproduces the original run exactly, for every sampler. Resuming with
changed settings continues the *same* trajectory from step k: steps before k
(and the multistep history they built) stay as originally computed.

What may change between the recorded run and a resume: prompt, negative
prompt, cfg and all hooks (edits, guidance, attention processors, callbacks).
What may not: model, sampler, steps, seed, size, batch size (they define the
trajectory); a resume with any of those changed raises ``InvalidRequest``.

Memory: one latent per step and image (e.g. 64 KiB for a 512x512 SD image), so
150 steps x 16 images is ~150 MiB of RAM. A cache is used by one run at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conditioning import Conditioning
from .request import GenerationRequest, InvalidRequest
from .samplers import restore_scheduler, snapshot_scheduler

TRAJECTORY_FIELDS = ("sampler", "steps", "seed", "width", "height", "batch_size", "shared_seed")


@dataclass(frozen=True)
class _StepState:
    latents: torch.Tensor  # x_t entering the step, CPU
    scheduler: dict
    generators: tuple


class LatentCache:
    """Trajectory of the last run made with this cache (see module docstring)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._steps: list[_StepState] = []
        self._conditioning: Conditioning | None = None
        self.request: GenerationRequest | None = None

    @property
    def steps_recorded(self) -> int:
        """How many steps can be resumed from (0..steps_recorded-1)."""
        return len(self._steps)

    def latents_at(self, step: int) -> torch.Tensor:
        """x_t entering ``step`` (CPU tensor)."""
        return self._steps[step].latents

    def fork(self) -> LatentCache:
        """A cache holding the same recorded run; resuming from the fork leaves this one's trajectory intact."""
        twin = LatentCache()
        twin._key, twin._steps = self._key, list(self._steps)
        twin._conditioning, twin.request = self._conditioning, self.request
        return twin

    def clear(self) -> None:
        self.__init__()

    # ---- used by the engine -------------------------------------------------

    def check_resume(self, key: tuple, req: GenerationRequest, step: int) -> None:
        if self._key is None:
            raise InvalidRequest("resume_from_step needs a cache that recorded a run; this one is empty",
                                 "resume_from_step")
        if key != self._key:
            old = self.request
            changed = [f for f in TRAJECTORY_FIELDS if getattr(old, f) != getattr(req, f)] or ["model"]
            raise InvalidRequest(f"cannot resume: {', '.join(changed)} changed since the cached run; only prompt, "
                                 "negative_prompt, cfg and hooks may change (start a full run instead)", changed[0])
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < len(self._steps):
            raise InvalidRequest(f"resume_from_step must be an int in 0..{len(self._steps) - 1} "
                                 f"(steps recorded), got {step!r}", "resume_from_step")

    def begin(self, key: tuple, req: GenerationRequest, resume_from: int | None) -> None:
        if resume_from is None:
            self._steps = []
        self._key = key
        self.request = req

    def record(self, step: int, latents: torch.Tensor, scheduler, generators) -> None:
        del self._steps[step:]
        self._steps.append(_StepState(latents.detach().to("cpu", copy=True), snapshot_scheduler(scheduler),
                                      tuple(g.get_state() for g in generators)))

    def restore(self, step: int, scheduler, generators, device) -> torch.Tensor:
        state = self._steps[step]
        restore_scheduler(scheduler, state.scheduler)
        for gen, gen_state in zip(generators, state.generators):
            gen.set_state(gen_state)
        return state.latents.to(device, copy=True)

    def conditioning(self, key: tuple) -> Conditioning | None:
        c = self._conditioning
        return c if c is not None and c.key == key else None

    def store_conditioning(self, cond: Conditioning) -> None:
        self._conditioning = cond.to("cpu")
