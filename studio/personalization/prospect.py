"""Using a per-stage concept (ProSpect, Zhang et al., "ProSpect: Prompt Spectrum for Attribute-Aware
Personalization of Diffusion Models", 2023) at generation time.

A per-stage concept has one learned vector per timestep stage (stages as in :mod:`studio.composition.stages`:
1 = the noisiest tenth of the steps, where layout and shape form; 10 = fine detail). At each step the prompt is
encoded with the stage's own token (``<ring>@k``) in the stages the user gives to the concept, and with a plain
word (the replacement, e.g. the initializer word) in the others. Giving the early stages to the concept and the
late ones to the prompt takes the concept's shape with the prompt's colour, and so on. Zero extra UNet evaluations:
one text encoding per stage, swapped in by :class:`~studio.composition.stages.StagePrompts`.
"""

from __future__ import annotations

from collections.abc import Iterable

from studio.composition.stages import NUM_STAGES, StagePrompts, stages_of_steps
from studio.engine import InvalidRequest, make_scheduler
from studio.engine.conditioning import encode_texts

from .tokens import LearnedConcept


def check_stage_set(stages: Iterable[int]) -> frozenset[int]:
    chosen = frozenset(stages)
    if not chosen or not all(isinstance(k, int) and 1 <= k <= NUM_STAGES for k in chosen):
        raise InvalidRequest(f"give the concept at least one stage, each in 1..{NUM_STAGES}, got {sorted(chosen)}",
                             "stages")
    return chosen


def stage_prompts(prompt: str, concept: LearnedConcept, stages: Iterable[int], replacement: str) -> dict[int, str]:
    """Stage (1..10) -> the prompt text used at that stage."""
    if concept.token not in prompt:
        raise InvalidRequest(f"the prompt does not contain {concept.token}; write it where the concept goes, e.g. "
                             f"'a green {concept.token}'", "prompt")
    chosen = check_stage_set(stages)
    plain = replacement.strip() or concept.init_word or "object"
    return {k: prompt.replace(concept.token, f"{concept.token}@{k}" if k in chosen else plain)
            for k in range(1, NUM_STAGES + 1)}


def prospect_edit(model, sampler: str, steps: int, prompt: str, concept: LearnedConcept, stages: Iterable[int],
                  replacement: str = "") -> StagePrompts:
    """The embedding edit for a run of ``steps`` ``sampler`` steps on ``model`` (a copy that knows the concept)."""
    scheduler = make_scheduler(model.scheduler_config, sampler)
    scheduler.set_timesteps(steps)
    step_stages = stages_of_steps(scheduler.timesteps, int(scheduler.config.num_train_timesteps))
    texts = stage_prompts(prompt, concept, stages, replacement)
    order = sorted(texts)
    encoded = encode_texts(model, [texts[k] for k in order])
    return StagePrompts(step_stages, {k: encoded[i:i + 1] for i, k in enumerate(order)})
