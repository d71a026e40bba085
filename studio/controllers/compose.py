"""The composition workbench's controller (no UI imports).

One picture from parts the sampler honours separately:

* **parts**: sub-prompts with weights, joined as ``p1 :w1 AND p2 :w2`` (composable diffusion; a negative
  weight is NOT). The prompt language (:mod:`studio.prompting`) also works in the base prompt directly.
* **per-stage prompts**: stage ranges of the noise schedule read their own prompt (:mod:`studio.composition.stages`).
* **regions**: boxes with their own prompts, guided inside their feathered masks.
* **compare**: the monolithic prompt (the parts written as one sentence) at the same seed, side by side.
* **blend**: two prompts by interpolation, alternation and switching, side by side in one batched run.

Every image is saved with its composition settings (``controls["composition"]``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from PIL import Image

from studio.composition import (
    BLEND_MODES, BlendEdit, Region, RegionalGuidance, StagePrompt, StagePrompts, check_regions, check_stages,
    stages_of_steps, timeline,
)
from studio.engine import CancelToken, GenerationRequest, InvalidRequest, RunHooks
from studio.engine.conditioning import encode_texts
from studio.errors import check_text_item
from studio.prompting import parse, plain_text, schedule

from .generate import GenerateController, PreviewCallback, ProgressCallback, Saver

WORKBENCH = "composition"
MAX_PARTS = 6
MAX_PART_WEIGHT = 5.0


@dataclass(frozen=True)
class PromptPart:
    """One sub-prompt and its weight (negative subtracts the concept: NOT)."""

    text: str
    weight: float = 1.0

    def to_json(self) -> dict:
        return {"text": self.text, "weight": float(self.weight)}


@dataclass(frozen=True)
class CompositionRequest:
    """A composed render.

    ``base`` carries the sampler settings and seed; its ``prompt`` is used as written (in the prompt language)
    unless ``parts`` are given, which then make the prompt. ``regions`` need a single global prompt (no AND);
    ``stages`` replace the prompt at their stages. ``compare`` also renders ``monolithic`` (default: the parts or
    region prompts joined with "and") at the same seed."""

    base: GenerationRequest
    parts: tuple[PromptPart, ...] = ()
    regions: tuple[Region, ...] = ()
    feather: float = 0.05
    region_mode: str = "add"  # "add" | "average": see RegionalGuidance
    stages: tuple[StagePrompt, ...] = ()
    compare: bool = False
    monolithic: str | None = None


@dataclass(frozen=True)
class CompositionOutcome:
    images: tuple[Image.Image, ...]
    comparison: tuple[Image.Image, ...]  # the monolithic prompt's images (empty unless compare)
    prompt: str  # the prompt as run
    monolithic: str
    timeline: tuple[dict, ...]  # per-stage rows (see studio.composition.timeline); empty without stages
    request: CompositionRequest  # as run: concrete seed and size
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class BlendRequest:
    """Two prompts blended five ways at ``base``'s seed: A, interpolation at ``mix`` (weight of B), alternating
    steps, switching to B at ``switch_at`` (fraction of the steps), B."""

    base: GenerationRequest
    prompt_a: str
    prompt_b: str
    mix: float = 0.5
    switch_at: float = 0.5


@dataclass(frozen=True)
class BlendOutcome:
    images: Mapping[str, Image.Image]  # mode -> image, modes in BLEND_MODES order
    request: BlendRequest
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def compose_prompt(parts: tuple[PromptPart, ...]) -> str:
    """``p1 :w1 AND NOT p2 AND p3``: weight 1 is left out, -1 is written NOT."""
    written = []
    for p in parts:
        text = p.text.strip()
        if p.weight == 1:
            written.append(text)
        elif p.weight == -1:
            written.append(f"NOT {text}")
        else:
            written.append(f"{text} :{p.weight:g}")
    return " AND ".join(written)


def monolithic_prompt(prompt: str, regions: tuple[Region, ...] = ()) -> str:
    """The composition as one sentence: the positive parts (as read at the first step) joined with "and",
    then the region prompts."""
    pieces = [plain_text(schedule(p, 1)[0]).strip() for p in parse(prompt).parts if p.weight > 0]
    pieces += [plain_text(schedule(parse(r.prompt).parts[0], 1)[0]).strip() for r in regions]
    return " and ".join(p for p in pieces if p)


class CompositionController:
    """Composed renders and blends on one model; see the module docstring."""

    def __init__(self, model, store: Saver | None = None, *, generator: GenerateController | None = None):
        self.model = model
        self.generator = generator or GenerateController(model, store)

    def with_store(self, store: Saver | None) -> CompositionController:
        return CompositionController(self.model, generator=self.generator.with_store(store))

    def defaults(self) -> GenerationRequest:
        return self.generator.defaults()

    # ------------------------------------------------------------------ validation

    def prepare(self, request: CompositionRequest) -> tuple[CompositionRequest, GenerationRequest, RunHooks]:
        """Validate ``request``; return it with a concrete seed, the generation request and the hooks."""
        # 1. shape of the request
        if not isinstance(request, CompositionRequest):
            raise InvalidRequest(f"expected a CompositionRequest, got {type(request).__name__}")
        base = request.base
        if not isinstance(base, GenerationRequest):
            raise InvalidRequest(f"base must be a GenerationRequest, got {type(base).__name__}", "base")
        # 2. the prompt: from the parts, or the base prompt as written
        if request.parts:
            prompt = self._prompt_from_parts(request.parts)
            base = replace(base, prompt=prompt)
        composed = parse(base.prompt).is_composed
        # 3. techniques and their combinations
        check_regions(request.regions, request.feather, request.region_mode)
        check_stages(request.stages)
        if request.regions and composed:
            raise InvalidRequest("regions are guided by their own prompts around one global prompt: remove AND / "
                                 "NOT / part weights from the global prompt (or put each part in a region)",
                                 "regions")
        if request.stages and composed:
            raise InvalidRequest("per-stage prompts replace the prompt at their stages, so the prompt must be one "
                                 "part: remove AND / NOT / part weights, or compose without stages", "stages")
        if not isinstance(request.compare, bool):
            raise InvalidRequest(f"compare must be true or false, got {request.compare!r}", "compare")
        base = self.generator.prepare(base)
        hooks = self._hooks(base, request)
        self.generator.engine.validate(base, hooks)
        return replace(request, base=base, parts=tuple(request.parts)), base, hooks

    def _prompt_from_parts(self, parts) -> str:
        if not 1 <= len(parts) <= MAX_PARTS:
            raise InvalidRequest(f"compose 1..{MAX_PARTS} parts, got {len(parts)}", "parts")
        for i, p in enumerate(parts):
            where = f"part {i + 1}"
            check_text_item(p, PromptPart, where, "parts", text="text",
                            empty="it is empty; write a prompt or remove the part")
            w = p.weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                    or not 0 < abs(w) <= MAX_PART_WEIGHT:
                raise InvalidRequest(f"{where}: weight must be in [-{MAX_PART_WEIGHT:g}, {MAX_PART_WEIGHT:g}] and not 0 "
                                     f"(negative = NOT), got {w!r}", "parts")
            parsed = parse(p.text, field="parts")
            if len(parsed.parts) != 1 or parsed.parts[0].weight != 1:
                raise InvalidRequest(f"{where}: {p.text!r} contains AND / NOT / a part weight; give each "
                                     "sub-prompt its own part and set its weight with the slider", "parts")
        return compose_prompt(tuple(parts))

    def _hooks(self, base: GenerationRequest, request: CompositionRequest) -> RunHooks:
        edits = []
        if request.stages:
            step_stages = self.step_stages(base)
            assigned = sorted({k for s in request.stages for k in range(s.first, s.last + 1)})
            texts = [next(s.prompt for s in request.stages if s.first <= k <= s.last) for k in assigned]
            encoded = encode_texts(self.model, texts)
            edits.append(StagePrompts(step_stages, {k: encoded[i:i + 1] for i, k in enumerate(assigned)}))
        guidance = None
        if request.regions:
            embeds = encode_texts(self.model, [r.prompt for r in request.regions])
            multiple = 2 ** (len(self.model.unet.config.block_out_channels) - 1)
            guidance = RegionalGuidance(request.regions, embeds, request.feather, multiple, request.region_mode)
        return RunHooks(embedding_edits=edits, guidance=guidance)

    def step_stages(self, base: GenerationRequest) -> list[int]:
        """The stage (1..10, sampling order) of every step of ``base``'s sampler and step count."""
        timesteps = self.generator.engine.timesteps(base.sampler, base.steps)
        return stages_of_steps(timesteps, int(self.model.scheduler_config["num_train_timesteps"]))

    def timeline(self, base: GenerationRequest, stages: tuple[StagePrompt, ...]) -> list[dict]:
        check_stages(stages)
        return timeline(stages, base.prompt, self.step_stages(base))

    # ------------------------------------------------------------------ running

    def compose(self, request: CompositionRequest, *, save: bool = False, cancel: CancelToken | None = None,
                on_preview: PreviewCallback | None = None,
                on_progress: ProgressCallback | None = None) -> CompositionOutcome:
        t0 = time.perf_counter()
        # 1. validate, build hooks
        request, base, hooks = self.prepare(request)
        monolithic = request.monolithic if request.monolithic is not None else \
            monolithic_prompt(base.prompt, request.regions)
        controls = {"composition": self._controls(request, base.prompt, monolithic)}
        # 2. the composed run
        runner = self._runner(save)
        outcome = runner.run(base, hooks=hooks, cancel=cancel, on_preview=on_preview, on_progress=on_progress,
                             workbench=WORKBENCH, controls=controls)
        warnings = list(outcome.warnings)
        # 3. the monolithic prompt at the same seed, for comparison
        comparison: tuple = ()
        if request.compare:
            plain = replace(base, prompt=monolithic)
            compared = runner.run(plain, cancel=cancel, workbench=WORKBENCH,
                                  controls={"composition": {"comparison_of": base.prompt}})
            comparison = compared.images
            warnings += [w for w in compared.warnings if w not in warnings]
        rows = tuple(timeline(request.stages, base.prompt, self.step_stages(base))) if request.stages else ()
        timings = {**outcome.timings, "total": time.perf_counter() - t0}
        return CompositionOutcome(images=outcome.images, comparison=comparison, prompt=base.prompt,
                                  monolithic=monolithic, timeline=rows, request=request, saved=outcome.saved,
                                  timings=timings, warnings=tuple(warnings))

    def blend(self, request: BlendRequest, *, save: bool = False, cancel: CancelToken | None = None,
              on_progress: ProgressCallback | None = None) -> BlendOutcome:
        t0 = time.perf_counter()
        # 1. validate
        if not isinstance(request, BlendRequest):
            raise InvalidRequest(f"expected a BlendRequest, got {type(request).__name__}")
        for name in ("mix", "switch_at"):
            v = getattr(request, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise InvalidRequest(f"{name} must be a number in [0, 1], got {v!r}", name)
        for name in ("prompt_a", "prompt_b"):
            if not isinstance(getattr(request, name), str) or not getattr(request, name).strip():
                raise InvalidRequest(f"{name} is empty; blending needs two prompts", name)
        base = self.generator.prepare(replace(request.base, prompt=request.prompt_a,
                                              batch_size=len(BLEND_MODES), shared_seed=True))
        # 2. encode both prompts once; the edit gives each image its mode's conditioning per step
        a, b = encode_texts(self.model, [request.prompt_a, request.prompt_b]).split(1)
        switch_step = int(round(request.switch_at * base.steps))
        hooks = RunHooks(embedding_edits=[BlendEdit(a, b, request.mix, switch_step)])
        settings = {"prompt_a": request.prompt_a, "prompt_b": request.prompt_b, "mix": float(request.mix),
                    "switch_at": float(request.switch_at)}
        controls = [{"composition": {"blend": {**settings, "mode": mode}}} for mode in BLEND_MODES]
        # 3. one batched run on shared noise
        outcome = self._runner(save).run(base, hooks=hooks, cancel=cancel, on_progress=on_progress,
                                         workbench=WORKBENCH, controls=controls)
        timings = {**outcome.timings, "total": time.perf_counter() - t0}
        return BlendOutcome(images=dict(zip(BLEND_MODES, outcome.images)), request=replace(request, base=base),
                            saved=outcome.saved, timings=timings, warnings=outcome.warnings)

    # ------------------------------------------------------------------ helpers

    def _runner(self, save: bool) -> GenerateController:
        return self.generator if save else self.generator.with_store(None)

    @staticmethod
    def _controls(request: CompositionRequest, prompt: str, monolithic: str) -> dict:
        data: dict = {"prompt": prompt, "monolithic": monolithic}
        if request.parts:
            data["parts"] = [p.to_json() for p in request.parts]
        if request.regions:
            data["regions"] = [r.to_json() for r in request.regions]
            data["feather"] = float(request.feather)
            data["region_mode"] = request.region_mode
        if request.stages:
            data["stages"] = [s.to_json() for s in request.stages]
        return data


__all__ = [
    "MAX_PARTS", "BlendOutcome", "BlendRequest", "CompositionController", "CompositionOutcome",
    "CompositionRequest", "PromptPart", "compose_prompt", "monolithic_prompt",
]
