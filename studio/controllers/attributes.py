"""Attributes controller: subject-specific sliders that the image follows (UI-free).

A slider adds ``value * delta`` to the prompt's text-encoder output at the tokens of one subject word
(:mod:`studio.attributes.directions`, Baumann et al. 2024). Deltas come from

* ``naive``: the optimization-free average over templates of a phrasing pair ("a huge circle" / "a tiny circle");
* ``learned``: fitted with the model's denoising loss (:class:`~studio.attributes.learning.DirectionLearner`;
  train it first with :meth:`AttributesController.learner`);
* ``learned-images``: fitted with the plain denoising loss on example pictures drawn for every slider value, for
  definitions that say how to draw them (Tiny World's size preset; train it the same way);
* ``weight``: the baseline, no delta: the attribute words written into the prompt with A1111-style emphasis
  ``|value| / range``.

Deltas are cached in memory and on disk (:class:`~studio.attributes.store.DirectionStore`, keyed by the model's
weights hash). A :class:`SliderSession` (one per browser session) keeps the encoded prompt and the trajectory of
the last render, so a slider move only re-applies deltas, and with a delay only the steps after the delay are
re-run. :meth:`AttributesController.sweep` renders N values as one batched run on the same noise.

Example::

    from studio.controllers.attributes import AttributesController, AttributeRequest, SliderSetting
    from studio.engine import GenerationRequest
    from studio.models import load_model

    controller = AttributesController(load_model("tinyworld"), directions_root="outputs/directions")
    base = GenerationRequest(prompt="a medium red circle and a medium blue square", seed=3, cfg=3.0)
    outcome = controller.render(AttributeRequest(base, (SliderSetting("size", "circle", 1.5),)))
    outcome.images[0].save("bigger-circle.png")
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from studio.attributes.definitions import AttributeDefinition, definitions_for, model_kind
from studio.attributes.directions import (
    ReplaceCondEmbeddings, SubjectDirections, SubjectShift, emphasis_embeddings, naive_direction, start_step_for,
    subject_token_indices,
)
from studio.attributes.learning import DirectionLearner, ImageLearnSettings, LearnSettings
from studio.attributes.locality import LocalReference, SubjectLocalBlend
from studio.attributes.store import DirectionStore
from studio.engine import CancelToken, GenerationRequest, InvalidRequest, LatentCache, RunHooks
from studio.prompting import parse, plain_text, schedule

from .generate import GenerateController, PreviewCallback, PreviewConfig, ProgressCallback, Saver

METHODS = ("naive", "learned", "learned-images", "weight")
LEARNED = ("learned", "learned-images")  # methods whose direction is trained (a background job) before use
WORKBENCH = "attributes"
MAX_SLIDERS = 8
MAX_SWEEP = 16


# ----------------------------------------------------------------------------- requests and outcomes


@dataclass(frozen=True)
class SliderSetting:
    """One slider: ``attribute`` (a shipped definition's name, or a user's :class:`AttributeDefinition`) aimed
    at the ``subject`` word of the prompt, at ``value`` (in ``[-range, range]``), driven by ``method``."""

    attribute: str | AttributeDefinition
    subject: str
    value: float
    method: str = "naive"

    def to_json(self) -> dict:
        attr = self.attribute.to_json() if isinstance(self.attribute, AttributeDefinition) else self.attribute
        return {"attribute": attr, "subject": self.subject, "value": float(self.value), "method": self.method}


@dataclass(frozen=True)
class AttributeRequest:
    """A render: the base generation plus sliders; ``delay`` is the fraction of steps run without them."""

    base: GenerationRequest
    sliders: tuple[SliderSetting, ...] = ()
    delay: float = 0.0
    local: bool = False  # keep everything but the subjects as at slider zero (SubjectLocalBlend)


@dataclass(frozen=True)
class SweepRequest:
    """``slider`` rendered at each of ``values`` (its own ``value`` is ignored) on one noise, ``others`` held."""

    base: GenerationRequest
    slider: SliderSetting
    values: tuple[float, ...]
    others: tuple[SliderSetting, ...] = ()
    delay: float = 0.0
    local: bool = False  # keep everything but the swept subject as at slider zero (SubjectLocalBlend)


@dataclass(frozen=True)
class AttributeOutcome:
    images: tuple[Image.Image, ...]
    request: AttributeRequest  # as run: concrete seed and size
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    resumed_from: int | None = None  # the step a delayed re-render started from (steps before were reused)


@dataclass(frozen=True)
class SweepOutcome:
    frames: tuple[Image.Image, ...]  # one per value, in order
    values: tuple[float, ...]
    request: SweepRequest
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def animation(self, fmt: str = "webp", *, min_side: int = 256, frame_ms: int = 120) -> bytes:
        """The frames as a looping animation (there and back), upscaled (nearest) to at least ``min_side``."""
        return animate(self.frames, fmt=fmt, min_side=min_side, frame_ms=frame_ms)


class SliderSession:
    """One user's render state: the encoded prompt, the last trajectory (for delayed re-renders) and the last
    local render's reference at slider zero (so the next local render of the same base skips it).

    Kept per browser session (``gr.State``), never shared."""

    def __init__(self) -> None:
        self.cache = LatentCache()
        self.last_base: GenerationRequest | None = None
        self.last_start: int = 0
        self.local_reference: LocalReference | None = None

    def reference_for(self, key: tuple) -> LocalReference | None:
        ref = self.local_reference
        return ref if ref is not None and ref.key == key else None

    def resume_step(self, base: GenerationRequest, start: int) -> int | None:
        """Steps before ``start`` are those of the last render (same base, which was unedited at least that
        long): resume there instead of recomputing them."""
        if start > 0 and self.last_base == base and self.last_start >= start and self.cache.steps_recorded > start:
            return start
        return None


def animate(frames: Sequence[Image.Image], *, fmt: str = "webp", min_side: int = 256, frame_ms: int = 120) -> bytes:
    if fmt not in ("webp", "gif"):
        raise InvalidRequest(f"animation format must be webp or gif, got {fmt!r}", "format")
    if not frames:
        raise InvalidRequest("an animation needs at least one frame", "values")
    w, h = frames[0].size
    k = max(1, math.ceil(min_side / max(1, min(w, h))))
    big = [f.convert("RGB").resize((w * k, h * k), Image.NEAREST) for f in frames]
    sequence = big + big[-2:0:-1]  # there and back
    buf = io.BytesIO()
    options = {"lossless": True} if fmt == "webp" else {"optimize": False}
    sequence[0].save(buf, format=fmt.upper(), save_all=True, append_images=sequence[1:], duration=frame_ms,
                     loop=0, **options)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the controller


class AttributesController:
    """Sliders on ``model``; see the module docstring. ``store`` saves images (``None``: nothing saved unless a
    call passes ``save=True`` and a store exists); ``directions_root`` holds computed deltas on disk."""

    def __init__(self, model, store: Saver | None = None, *, directions_root: Path | str | None = None,
                 definitions: Sequence[AttributeDefinition] | None = None, preview: PreviewConfig = PreviewConfig()):
        self.model = model
        self.generator = GenerateController(model, store, preview=preview)
        self.directions = DirectionStore(directions_root) if directions_root is not None else None
        self._definitions = list(definitions) if definitions is not None else definitions_for(model)
        self._deltas: dict[tuple, torch.Tensor] = {}  # derived, immutable data: safe to share between sessions
        self._lock = threading.Lock()

    def with_store(self, store: Saver | None) -> AttributesController:
        """The same controller (model, definitions, direction caches) saving through ``store``."""
        other = AttributesController.__new__(AttributesController)
        other.__dict__.update(self.__dict__)
        other.generator = self.generator.with_store(store)
        return other

    def validate(self, request: AttributeRequest) -> GenerationRequest:
        """Raise :class:`InvalidRequest` if ``request`` can't run; returns its base with a concrete seed."""
        return self._prepare(request.base, request, "render")

    # ------------------------------------------------------------------ definitions and directions

    @property
    def kind(self) -> str:
        return model_kind(self.model)

    def definitions(self) -> list[AttributeDefinition]:
        return list(self._definitions)

    def definition(self, attribute: str | AttributeDefinition) -> AttributeDefinition:
        if isinstance(attribute, AttributeDefinition):
            return attribute
        for d in self._definitions:
            if d.name == attribute:
                return d
        names = ", ".join(d.name for d in self._definitions) or "(none for this model)"
        raise InvalidRequest(f"unknown attribute {attribute!r}; this model has: {names} "
                             "(or define your own with positive/negative phrasings)", "attribute")

    def defaults(self) -> GenerationRequest:
        return self.generator.defaults()

    def direction(self, attribute: str | AttributeDefinition, subject: str, method: str = "naive") -> torch.Tensor:
        """The delta for ``attribute`` aimed at ``subject`` (computed once, then cached in memory and on disk).

        Learned deltas must have been trained (:meth:`learner`); asking for one that was not raises."""
        definition = self.definition(attribute)
        if method not in ("naive",) + LEARNED:
            raise InvalidRequest(f"method {method!r} has no direction; methods with one: naive, "
                                 f"{', '.join(LEARNED)}", "method")
        key = (self.model.weights_hash, definition.key(method), subject.lower(), method)
        with self._lock:
            if key in self._deltas:
                return self._deltas[key]
        delta = self.directions.load(self.model.weights_hash, definition, subject.lower(), method) \
            if self.directions is not None else None
        if delta is None:
            if method in LEARNED:
                raise InvalidRequest(f"no {method} direction for {definition.name!r} on {subject!r} yet; train it "
                                     "first (Learn button / `python -m studio attributes --learn`)", "method")
            delta = naive_direction(self.model, subject.lower(), definition.positive, definition.negative,
                                    definition.templates).cpu()
            if self.directions is not None:
                self.directions.save(self.model.weights_hash, definition, subject.lower(), method, delta)
        with self._lock:
            self._deltas[key] = delta
        return delta

    def has_learned(self, attribute: str | AttributeDefinition, subject: str, method: str = "learned") -> bool:
        definition = self.definition(attribute)
        key = (self.model.weights_hash, definition.key(method), subject.lower(), method)
        with self._lock:
            if key in self._deltas:
                return True
        return self.directions is not None and self.directions.path(
            self.model.weights_hash, definition, subject.lower(), method).is_file()

    def learner(self, attribute: str | AttributeDefinition, subject: str,
                settings: LearnSettings | ImageLearnSettings = LearnSettings(), *,
                cfg: float | None = None) -> DirectionLearner:
        """A (not yet started) job that learns the delta; when done it is cached and saved. With a directions
        store the job checkpoints there, so starting it again after a cancel resumes. ``ImageLearnSettings``
        learn the ``learned-images`` direction (the definition must have examples)."""
        definition = self.definition(attribute)
        subject = _check_subject_word(subject)
        method = "learned-images" if isinstance(settings, ImageLearnSettings) else "learned"
        if method == "learned-images" and definition.examples is None:
            raise InvalidRequest(f"{definition.name!r} has no example images to learn from; the learned-images "
                                 "method needs an attribute whose preset has \"examples\"", "method")
        checkpoint = None
        if self.directions is not None:
            final = self.directions.path(self.model.weights_hash, definition, subject, method)
            checkpoint = str(final.with_name(final.stem + ".partial.pt"))

        def done(delta: torch.Tensor) -> None:
            if self.directions is not None:
                self.directions.save(self.model.weights_hash, definition, subject, method, delta,
                                     extra={"settings": asdict(settings)})
            with self._lock:
                self._deltas[(self.model.weights_hash, definition.key(method), subject, method)] = delta

        return DirectionLearner(self.model, definition, subject, settings, checkpoint=checkpoint,
                                cfg=self.defaults().cfg if cfg is None else cfg, on_done=done)

    # ------------------------------------------------------------------ rendering

    def render(self, request: AttributeRequest, *, session: SliderSession | None = None, save: bool = False,
               cancel: CancelToken | None = None, on_preview: PreviewCallback | None = None,
               on_progress: ProgressCallback | None = None) -> AttributeOutcome:
        """Render ``request`` (one image per base batch entry); see the module docstring."""
        t0 = time.perf_counter()
        # 1. validate and resolve the seed
        base = self._prepare(request.base, request, "render")
        request = replace(request, base=base)
        # 2. hooks from the sliders (deltas computed or taken from the cache); a local render carries a reference
        #    row at slider zero on the same noise, last in the batch, dropped before saving, unless the session
        #    recorded that reference in an earlier render of the same base
        start = start_step_for(request.delay, base.steps)
        run_base, postprocess, cached, reference_key = base, None, None, None
        pairs = [(s, (float(s.value),)) for s in request.sliders]
        if request.local:
            reference_key = (self.model.weights_hash, base,
                             self._local_indices(base, [s.subject for s in request.sliders]))
            cached = session.reference_for(reference_key) if session is not None else None
            if cached is None:
                run_base = replace(base, batch_size=2, shared_seed=True)
                pairs = [(s, (float(s.value), 0.0)) for s in request.sliders]
                postprocess = _drop_reference
        hooks, blend = self._hooks(run_base, pairs, start,
                                   local=[s.subject for s in request.sliders] if request.local else None,
                                   cached=cached, record=session is not None and cached is None)
        # 3. run (resuming after the delay when the session's last render shares those steps; a local render
        #    re-runs every step, its masks accumulate attention from the first)
        resume = session.resume_step(run_base, start) if session is not None and not request.local else None
        cache = session.cache if session is not None else None
        controls = self._controls(request.sliders, request.delay, local=request.local)
        outcome = self._runner(save).run(
            run_base, hooks=hooks, cache=cache, resume_from_step=resume, cancel=cancel, on_preview=on_preview,
            on_progress=on_progress, workbench=WORKBENCH,
            controls=[controls] * run_base.batch_size if request.local else controls, postprocess=postprocess)
        if session is not None:
            session.last_base = run_base
            session.last_start = start  # steps from here on now carry this render's edits
            recorded = blend.recorded(reference_key) if blend is not None else None
            if recorded is not None:
                session.local_reference = recorded
        timings = {**outcome.timings, "total": time.perf_counter() - t0}
        return AttributeOutcome(images=outcome.images, request=request, saved=outcome.saved, timings=timings,
                                warnings=outcome.warnings, resumed_from=resume)

    def slider_hooks(self, base: GenerationRequest, sliders: Sequence[SliderSetting]) -> RunHooks:
        """The embedding edits of ``sliders`` on ``base``'s prompt, for another workbench's run (e.g. an
        inspection branch)."""
        for s in sliders:
            self._check_value(s)
        return self._hooks(base, [(s, (float(s.value),)) for s in sliders], 0)[0]

    def sweep(self, request: SweepRequest, *, save: bool = False, cancel: CancelToken | None = None,
              on_progress: ProgressCallback | None = None) -> SweepOutcome:
        """All ``values`` in one batched run on the same noise (``shared_seed``)."""
        t0 = time.perf_counter()
        # 1. validate
        values = tuple(float(v) for v in request.values)
        if not 1 <= len(values) <= MAX_SWEEP:
            raise InvalidRequest(f"a sweep takes 1..{MAX_SWEEP} values, got {len(values)}", "values")
        # a local sweep blends against its frame at zero; without one, a hidden reference row is added last
        hidden = request.local and 0.0 not in values
        run_values = values + (0.0,) if hidden else values
        base = replace(request.base, batch_size=len(run_values), shared_seed=True)
        swept = replace(request.slider, value=values[-1])
        base = self._prepare(base, AttributeRequest(base, (swept, *request.others), request.delay, request.local),
                             "sweep")
        for v in values:
            self._check_value(replace(request.slider, value=v))
        # 2. hooks: the swept slider gets one value per image, the others one for all
        start = start_step_for(request.delay, base.steps)
        pairs = [(request.slider, run_values)] + [(s, (float(s.value),)) for s in request.others]
        hooks, _ = self._hooks(base, pairs, start, local=[request.slider.subject] if request.local else None,
                               reference=run_values.index(0.0) if request.local else 0)
        # 3. one batched run
        controls = [self._controls((replace(request.slider, value=v), *request.others), request.delay,
                                   sweep={"values": list(values), "index": i}, local=request.local)
                    for i, v in enumerate(run_values)]
        outcome = self._runner(save).run(base, hooks=hooks, cancel=cancel, on_progress=on_progress,
                                         workbench=WORKBENCH, controls=controls,
                                         postprocess=_drop_reference if hidden else None)
        timings = {**outcome.timings, "total": time.perf_counter() - t0}
        return SweepOutcome(frames=outcome.images, values=values, request=replace(request, base=base),
                            saved=outcome.saved, timings=timings, warnings=outcome.warnings)

    # ------------------------------------------------------------------ helpers

    def _runner(self, save: bool) -> GenerateController:
        return self.generator if save else self.generator.with_store(None)

    def _prepare(self, base: GenerationRequest, request: AttributeRequest, what: str) -> GenerationRequest:
        if not isinstance(base, GenerationRequest):
            raise InvalidRequest(f"{what}: base must be a GenerationRequest, got {type(base).__name__}", "base")
        delay = request.delay
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay < 1:
            raise InvalidRequest(f"delay must be a fraction of the steps in [0, 1), got {delay!r}", "delay")
        if len(request.sliders) > MAX_SLIDERS:
            raise InvalidRequest(f"at most {MAX_SLIDERS} sliders at once, got {len(request.sliders)}", "sliders")
        weighted = [s for s in request.sliders if s.method == "weight"]
        if request.local is not True and request.local is not False:
            raise InvalidRequest(f"local must be true or false, got {request.local!r}", "local")
        if request.local:
            if weighted:
                raise InvalidRequest("local blending follows the subject word's attention, which the prompt-weight "
                                     "baseline moves (it rewrites the prompt): use a naive or learned slider", "local")
            if not request.sliders:
                raise InvalidRequest("local blending needs at least one slider", "local")
            if base.batch_size != 1 and what == "render":
                raise InvalidRequest(f"a local render takes batch size 1 (it renders a reference at slider zero "
                                     f"beside the image), got {base.batch_size}", "batch_size")
        if weighted and len(request.sliders) > 1:
            raise InvalidRequest("the prompt-weight baseline rewrites the prompt, so it runs alone: use one "
                                 "slider with method 'weight', or naive/learned sliders stacked", "method")
        base = self.generator.prepare(base)
        self.generator.engine.validate(base)
        for s in request.sliders:
            self._check_value(s)
            subject_token_indices(self.model.tokenizer, slider_text(base.prompt), s.subject)
        return base

    def _check_value(self, s: SliderSetting) -> None:
        if not isinstance(s, SliderSetting):
            raise InvalidRequest(f"sliders must be SliderSetting, got {type(s).__name__}", "sliders")
        if s.method not in METHODS:
            raise InvalidRequest(f"unknown method {s.method!r}; allowed: {', '.join(METHODS)}", "method")
        definition = self.definition(s.attribute)
        v = s.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or abs(v) > definition.range + 1e-9:
            raise InvalidRequest(f"{definition.name}: value must be a number in [-{definition.range:g}, "
                                 f"{definition.range:g}], got {v!r}", "value")

    def _hooks(self, base: GenerationRequest, pairs, start: int, *, local: Sequence[str] | None = None,
               reference: int | None = None, cached: LocalReference | None = None,
               record: bool = False) -> tuple[RunHooks, SubjectLocalBlend | None]:
        """``pairs`` = [(slider, values)]: values has one entry (all images) or one per image. ``local``: the
        subject words whose attention makes the local-blend masks, against batch row ``reference`` (default: the
        last row, where :meth:`render` puts its reference) or against ``cached``, a reference recorded earlier
        (then no row is one); ``record``: keep the reference row's trajectory. Returns the hooks and the blend."""
        shifts, edits = [], []
        for slider, values in pairs:
            definition = self.definition(slider.attribute)
            subject = _check_subject_word(slider.subject)
            if slider.method == "weight":
                text = slider_text(base.prompt)
                per_image = torch.cat([emphasis_embeddings(self.model, text, subject, definition.positive,
                                                           definition.negative, v, definition.range) for v in values])
                edits.append(ReplaceCondEmbeddings(per_image, start))
                continue
            if all(v == 0 for v in values):
                continue
            delta = self.direction(definition, subject, slider.method)
            indices = subject_token_indices(self.model.tokenizer, slider_text(base.prompt), subject)
            shifts.append(SubjectShift(indices, delta, tuple(values)))
        if shifts:
            edits.append(SubjectDirections(shifts, start))
        if not local:
            return RunHooks(embedding_edits=edits), None
        first = int(base.cfg != 1.0)  # the engine stacks [uncond x batch, cond x batch]; no uncond pass at CFG 1
        row = None if cached is not None else base.batch_size - 1 if reference is None else reference
        blend = SubjectLocalBlend(self._local_indices(base, local), row,
                                  slice(first * base.batch_size, (first + 1) * base.batch_size), cached=cached,
                                  record=record)
        return RunHooks(embedding_edits=edits, attention_processors=blend.processors, latent_edits=[blend]), blend

    def _local_indices(self, base: GenerationRequest, words: Sequence[str]) -> tuple[int, ...]:
        """The token positions of the subject words a local blend follows (each once, in order)."""
        text = slider_text(base.prompt)
        return tuple(dict.fromkeys(i for word in words for i in
                                   subject_token_indices(self.model.tokenizer, text, _check_subject_word(word))))

    def _controls(self, sliders, delay: float, sweep: dict | None = None, local: bool = False) -> dict:
        data = {"attributes": {"sliders": [s.to_json() for s in sliders], "delay": float(delay)}}
        if local:
            data["attributes"]["local"] = True
        if sweep is not None:
            data["attributes"]["sweep"] = sweep
        return data


def _drop_reference(images: list) -> list:
    """A local run's last row is its hidden reference at slider zero: not an output."""
    return images[:-1]


def slider_text(prompt: str) -> str:
    """The text whose tokens a slider edits: the prompt as read, emphasis kept out of it (emphasis scales
    embeddings, it does not move tokens). Sliders edit one prompt, so AND and prompt editing are refused."""
    parsed = parse(prompt)
    steps = set(schedule(parsed.parts[0], 2)) if len(parsed.parts) == 1 else set()
    if parsed.is_composed or len(steps) != 1:
        raise InvalidRequest("sliders edit one prompt: remove AND / NOT / part weights and [from:to:when] / [a|b] "
                             "from it (emphasis like (word:1.2) is fine)", "prompt")
    return plain_text(steps.pop())


def _check_subject_word(subject: str) -> str:
    if not isinstance(subject, str) or not subject.strip():
        raise InvalidRequest("subject must be a word of the prompt, got an empty subject", "subject")
    return subject.strip().lower()


__all__ = [
    "LEARNED", "METHODS", "AttributeOutcome", "AttributeRequest", "AttributesController", "SliderSession",
    "SliderSetting", "SweepOutcome", "SweepRequest", "animate",
]
