"""The editing workbench's controller (no UI imports): change part of an image and keep the rest.

* :meth:`EditingController.img2img`: SDEdit at a strength (the fraction of steps run from the noised image).
* :meth:`EditingController.inpaint`: repaint the masked region (white / opaque = repaint), the rest kept.
* :meth:`EditingController.outpaint`: extend the canvas on one side and paint the new area.
* :meth:`EditingController.invert`: DDIM inversion of a real image and its reconstruction (PSNR).
* :meth:`EditingController.prompt_to_prompt`: the source prompt and its edit on the same noise, with the edit's
  attention controlled by the source's (word swap, refinement, reweighting, local blending).
* :meth:`EditingController.edit_concepts`: a closed-form concept edit (UCE, Diff-QuickFix) giving an
  :class:`EditedModel`, a copy of the model owned by the caller (a browser session); :meth:`on_edited` runs every
  other edit on it, :meth:`compare_concept_edit` renders a prompt before and after, and the edit saves and loads
  as a small delta file. The shared model is never modified: reverting is dropping the copy.

Every result is saved (when the controller has a store) with its editing settings in ``controls["editing"]``. The
techniques are in :mod:`studio.editing`; runs go through the shared :class:`GenerateController` (one engine loop).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from studio.editing import (
    KnownRegionBlend, composite, extend_canvas, feathered, img2img_start, latent_mask, mask_array, seeded_noise,
    start_step,
)
from studio.engine import CancelToken, Engine, GenerationRequest, InvalidRequest, RunHooks, StartLatents
from studio.editing.concepts import (
    ConceptDelta, ConceptEditSpec, compute_delta, concept_presets_for, edited_copy, load_delta, save_delta,
)
from studio.editing.inversion import NullTextEmbeddings, ddim_invert, null_text_optimize
from studio.editing.contrast import (DEFAULT_SAMPLES, DEFAULT_STRENGTH, DEFAULT_THRESHOLD, contrast_mask, grown,
                                     source_x0_at_strength)
from studio.editing.p2p import prompt_to_prompt_hooks
from studio.engine.validate import size_rule
from studio.errors import check_text_item

from .generate import GenerateController, PreviewCallback, ProgressCallback, Saver

WORKBENCH = "editing"
DEFAULT_FEATHER_PX = 4.0


@dataclass(frozen=True)
class Img2ImgRequest:
    """Re-imagine ``image`` under ``base.prompt``; ``strength`` is the fraction of the steps run (0 keeps the image,
    1 starts from noise)."""

    base: GenerationRequest
    image: Image.Image
    strength: float = 0.6


@dataclass(frozen=True)
class InpaintRequest:
    """Repaint ``mask`` (an image, white or opaque = repaint; or floats in [0, 1]) of ``image`` under
    ``base.prompt``; ``feather`` softens the mask's edge (pixels); ``strength`` < 1 keeps some of the masked
    content (img2img inside the mask)."""

    base: GenerationRequest
    image: Image.Image
    mask: object
    feather: float = DEFAULT_FEATHER_PX
    strength: float = 1.0


@dataclass(frozen=True)
class OutpaintRequest:
    """Extend ``image`` by ``pixels`` on ``side`` (left, right, top, bottom) and paint the new area."""

    base: GenerationRequest
    image: Image.Image
    side: str = "right"
    pixels: int = 16
    feather: float = DEFAULT_FEATHER_PX


@dataclass(frozen=True)
class InversionRequest:
    """Invert ``image`` under ``base.prompt`` (DDIM, ``base.steps`` steps, no guidance) and reconstruct it.
    ``null_text`` also optimises one unconditional embedding per step (``inner_steps`` Adam steps at most) so that
    sampling *with* guidance (``base.cfg`` > 1) reconstructs it: the starting point for guided edits."""

    base: GenerationRequest
    image: Image.Image
    null_text: bool = False
    inner_steps: int = 10


@dataclass(frozen=True)
class InversionOutcome:
    latents: torch.Tensor  # x_T: start a DDIM run of the same steps here (StartLatents(latents, 0))
    reconstruction: Image.Image
    psnr_db: float  # reconstruction against the input
    request: GenerationRequest  # the reconstruction's request (DDIM; CFG 1, or the guidance null-text was fitted to)
    null_embeddings: torch.Tensor | None = None  # (steps, tokens, dim) with null-text optimisation
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)

    def hooks(self) -> RunHooks:
        """What a run from :attr:`latents` needs to follow the inversion (the null-text embeddings, if any)."""
        edits = [NullTextEmbeddings(self.null_embeddings)] if self.null_embeddings is not None else []
        return RunHooks(embedding_edits=edits)


@dataclass(frozen=True)
class PromptToPromptRequest:
    """Render ``base.prompt`` and its edit ``target`` on the same noise with prompt-to-prompt attention control.
    ``reweight`` scales the attention on words of ``target``; ``local_blend`` keeps everything but the edited words'
    region equal to the source (the words that differ between the prompts, or the reweighted ones).

    ``blend_mask`` says where the local-blend mask comes from: ``"attention"`` (the paper's: the blend words'
    cross-attention) or ``"contrast"`` (DiffEdit's: where the two prompts' noise predictions differ on the source
    image, estimated by a render of the source that stops at the mask's noise level; the blend words are then
    unused), or ``"auto"``: the contrast mask when the prompts differ (on Tiny World it keeps the edit inside the
    object far more often, see the README), the attention mask for a reweighting of the same prompt or when blend
    words are given.

    ``mask_grow`` widens the contrast mask by that many latent pixels (a max-pool); ``None`` picks by source: 1 for
    an inverted image, whose reconstruction's edges are softer so the thresholded mask misses the object's rim
    (on 100 inverted Tiny World scenes the edit turned blue in 75% instead of 27%), 0 for a generated source, whose
    mask already covers the object and where widening lets a drifting edit show.

    ``inverted`` edits a real image instead: the source is the inversion's reconstruction (its prompt, steps, CFG,
    size and DDIM sampler replace ``base``'s; with null-text embeddings when the inversion optimised them)."""

    base: GenerationRequest
    target: str
    cross_fraction: float = 0.8
    self_fraction: float = 0.4
    reweight: tuple[tuple[str, float], ...] = ()
    local_blend: bool = True
    blend_words: tuple[str, ...] = ()
    inverted: InversionOutcome | None = None
    blend_mask: str = "attention"
    mask_grow: int | None = None


BLEND_MASKS = ("attention", "contrast", "auto")


@dataclass(frozen=True)
class PromptToPromptOutcome:
    source: Image.Image
    edited: Image.Image
    request: GenerationRequest  # the source render as run
    blend_words: tuple[tuple[str, ...], tuple[str, ...]]
    saved: tuple = ()
    blend_mask: torch.Tensor | None = None  # (h, w) latent-grid contrast mask, when one was used
    mask_grow: int = 0  # latent pixels the contrast mask was widened by
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EditOutcome:
    images: tuple[Image.Image, ...]  # what was saved: for inpainting, composited over the original pixels
    request: GenerationRequest  # as run: concrete seed and the image's size
    source: Image.Image  # the input (extended, for outpainting)
    mask: np.ndarray | None = None  # the feathered mask used (pixel resolution), None for img2img
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class EditedModel:
    """A concept edit and the model copy it made (owned by whoever asked: one browser session, one CLI run)."""

    delta: ConceptDelta
    model: object  # a LoadedModel sharing every untouched tensor with the original
    seconds: float  # time to compute and apply the edit

    def describe(self) -> str:
        return self.delta.spec.describe()

    def settings(self) -> dict:
        """What is saved with every image the edited model makes."""
        return {**self.delta.spec.as_dict(), "delta": self.delta.digest, "base_model_hash": self.delta.model_hash}


@dataclass(frozen=True)
class ConceptCompareOutcome:
    original: Image.Image
    edited: Image.Image
    request: GenerationRequest
    saved: tuple = ()
    timings: Mapping[str, float] = field(default_factory=dict)


class EditingController:
    """Editing on ``model``; ``generator`` (optional) is the shared run-and-save path (its store saves results)."""

    def __init__(self, model, store: Saver | None = None, *, generator: GenerateController | None = None):
        self.model = model
        self.engine = Engine(model)
        self.generator = generator or GenerateController(model, store)

    def defaults(self) -> GenerationRequest:
        return self.generator.defaults()

    # ---- public

    def img2img(self, request: Img2ImgRequest, *, save: bool = True, cancel: CancelToken | None = None,
                on_preview: PreviewCallback | None = None, on_progress: ProgressCallback | None = None) -> EditOutcome:
        # 1. validate
        base, x0, noise = self._prepare(request.base, request.image)
        first = start_step(base.steps, request.strength)
        # 2. run from the noised image
        start = img2img_start(self.model, base.sampler, base.steps, x0, noise, float(request.strength))
        controls = {"editing": {"mode": "img2img", "strength": float(request.strength), "start_step": first}}
        return self._run(base, request.image, None, start, RunHooks(), controls, save, cancel, on_preview,
                         on_progress)

    def inpaint(self, request: InpaintRequest, *, save: bool = True, cancel: CancelToken | None = None,
                on_preview: PreviewCallback | None = None, on_progress: ProgressCallback | None = None) -> EditOutcome:
        # 1. validate
        base, x0, noise = self._prepare(request.base, request.image)
        soft = self._mask(request.mask, request.image.size, request.feather)
        # 2. run: start as img2img (pure noise at strength 1), keep the known region every step
        start = img2img_start(self.model, base.sampler, base.steps, x0, noise, float(request.strength))
        blend = KnownRegionBlend(x0, latent_mask(soft, self.model.vae_scale_factor), noise)
        controls = {"editing": {"mode": "inpaint", "strength": float(request.strength),
                                "feather": float(request.feather), "mask_fraction": round(float(soft.mean()), 4)}}
        return self._run(base, request.image, soft, start, RunHooks(latent_edits=[blend]), controls, save, cancel,
                         on_preview, on_progress)

    def outpaint(self, request: OutpaintRequest, *, save: bool = True, cancel: CancelToken | None = None,
                 on_preview: PreviewCallback | None = None, on_progress: ProgressCallback | None = None) -> EditOutcome:
        if not isinstance(request.image, Image.Image):
            raise InvalidRequest("give an image (PNG, JPEG or WebP)", "image")
        multiple = size_rule(self.model).multiple
        extended, new_area = extend_canvas(request.image, request.side, request.pixels, multiple)
        outcome = self.inpaint(InpaintRequest(request.base, extended, new_area, request.feather, 1.0), save=save,
                               cancel=cancel, on_preview=on_preview, on_progress=on_progress)
        return outcome

    def prompt_to_prompt(self, request: PromptToPromptRequest, *, save: bool = True,
                         cancel: CancelToken | None = None, on_progress: ProgressCallback | None = None
                         ) -> PromptToPromptOutcome:
        # 1. validate
        base = request.base
        if not isinstance(base, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(base).__name__}")
        check_text_item(request, PromptToPromptRequest, "prompt-to-prompt", "target", text="target",
                        empty="write the edited prompt")
        inverted = request.inverted
        if inverted is not None and not isinstance(inverted, InversionOutcome):
            raise InvalidRequest("inverted must be the outcome of an inversion", "inverted")
        if request.blend_mask not in BLEND_MASKS:
            raise InvalidRequest(f"blend_mask must be one of {', '.join(BLEND_MASKS)}, got {request.blend_mask!r}",
                                 "blend_mask")
        grow = request.mask_grow
        if grow is not None and not (isinstance(grow, int) and not isinstance(grow, bool) and 0 <= grow <= 4):
            raise InvalidRequest(f"mask_grow widens the contrast mask by 0..4 latent pixels (or None: by source), "
                                 f"got {grow!r}", "mask_grow")
        if inverted is not None:
            base = replace(inverted.request, batch_size=2, shared_seed=True)
        same_prompt = base.prompt.strip() == request.target.strip()
        mask_kind = request.blend_mask
        if mask_kind == "auto":  # blend words given by hand only make sense for the attention mask
            mask_kind = "attention" if same_prompt or request.blend_words else "contrast"
        contrast = request.local_blend and mask_kind == "contrast"
        if contrast and same_prompt:
            raise InvalidRequest("the noise-contrast mask compares the source and the edited prompt, which are the "
                                 "same here; for a reweighting edit use the attention mask", "blend_mask")
        base = self.generator.prepare(replace(base, batch_size=2, shared_seed=True))
        source_words, target_words = _words(base.prompt), _words(request.target)
        blend = ((), ())  # the attention mask's words (none with the contrast mask)
        if request.local_blend and not contrast and request.blend_words:
            blend = _blend_words_in(request.blend_words, base.prompt, request.target)
        elif request.local_blend and not contrast:
            removed = tuple(w for w in source_words if w not in target_words)
            added = tuple(w for w in target_words if w not in source_words)
            weighted = tuple(w for w, _ in request.reweight)
            blend = (removed or weighted, added or weighted)
        t0 = time.perf_counter()
        runner = self.generator if save else self.generator.with_store(None)
        progress = _TwoPartProgress(on_progress, base.steps)
        # 2. the contrast mask (DiffEdit) from the source: the inverted image's latents, or the source's own x0
        #    estimate at the mask's noise level (its render stops there: the mask sees nothing finer)
        mask, t_mask = None, 0.0
        if contrast:
            if inverted is not None:
                x0 = self._latents_of(inverted.reconstruction)[0]
            else:
                x0 = source_x0_at_strength(self.engine, replace(base, batch_size=1, shared_seed=False),
                                           cancel=cancel, on_progress=progress.first if on_progress else None)
            mask = contrast_mask(self.model, x0, base.prompt, request.target, seed=base.seed, cancel=cancel)
            grow = (1 if inverted is not None else 0) if grow is None else grow
            mask = grown(mask, grow)
            t_mask = time.perf_counter() - t0
        # 3. hooks: per-image prompts, attention control, local blend
        hooks, _ = prompt_to_prompt_hooks(
            self.model, base.prompt, request.target, base.steps, base.cfg, cross_fraction=request.cross_fraction,
            self_fraction=request.self_fraction, reweight=dict(request.reweight),
            blend_words=(list(blend[0]), list(blend[1])) if blend[0] or blend[1] else None, blend_mask=mask)
        controls = {"editing": {"mode": "prompt-to-prompt", "source": base.prompt, "target": request.target,
                                "cross_fraction": float(request.cross_fraction),
                                "self_fraction": float(request.self_fraction),
                                "reweight": [[w, float(f)] for w, f in request.reweight],
                                "local_blend": [list(blend[0]), list(blend[1])],
                                "blend_mask": mask_kind if request.local_blend else None}}
        if request.local_blend and request.blend_mask == "auto":
            controls["editing"]["blend_mask_asked"] = "auto"
        if mask is not None:
            controls["editing"]["contrast_mask"] = {"strength": DEFAULT_STRENGTH, "samples": DEFAULT_SAMPLES,
                                                    "threshold": DEFAULT_THRESHOLD, "grow": grow,
                                                    "share_of_image": round(float(mask.mean()), 4),
                                                    "source_latents": "inverted image's reconstruction"
                                                    if inverted is not None else
                                                    "the source's x0 estimate at the mask's noise level"}
        start = None
        if inverted is not None:  # a real image: start both from its inversion, follow its null-text embeddings
            start = StartLatents(inverted.latents.expand(2, -1, -1, -1).clone(), 0)
            hooks.embedding_edits.extend(inverted.hooks().embedding_edits)
            controls["editing"]["inverted"] = {"null_text": inverted.null_embeddings is not None,
                                               "reconstruction_psnr_db": round(inverted.psnr_db, 3)}
        # 4. one batched run of two on the same noise
        outcome = runner.run(base, cancel=cancel, on_progress=progress.second if on_progress else None,
                             controls=controls, workbench=WORKBENCH, hooks=hooks, start=start)
        return PromptToPromptOutcome(source=outcome.images[0], edited=outcome.images[1],
                                     request=replace(outcome.request, batch_size=1, shared_seed=False),
                                     blend_words=blend, saved=outcome.saved, blend_mask=mask,
                                     mask_grow=grow if mask is not None else 0,
                                     timings={**outcome.timings, "contrast_mask": t_mask,
                                              "total": time.perf_counter() - t0})

    def invert(self, request: InversionRequest, *, save: bool = False, cancel: CancelToken | None = None,
               on_progress: ProgressCallback | None = None) -> InversionOutcome:
        # 1. validate; the reconstruction is DDIM, unguided unless null-text embeddings are fitted to base.cfg
        guided = bool(request.null_text)
        if guided and not (request.base.cfg > 1.0):
            raise InvalidRequest(f"null-text optimisation fits a guided reconstruction; set CFG above 1 (got "
                                 f"{request.base.cfg})", "cfg")
        if guided and not (isinstance(request.inner_steps, int) and 1 <= request.inner_steps <= 100):
            raise InvalidRequest(f"inner steps must be an int in 1..100, got {request.inner_steps!r}", "inner_steps")
        base, x0, _ = self._prepare(replace(request.base, sampler="DDIM",
                                            cfg=request.base.cfg if guided else 1.0), request.image)
        # 2. invert (and fit the null text), then sample back from x_T
        t0 = time.perf_counter()
        path = ddim_invert(self.model, x0, base.prompt, base.steps, cancel=cancel, trajectory=True)
        t_invert = time.perf_counter() - t0
        null = None
        if guided:
            null = null_text_optimize(self.model, path, base.prompt, base.negative_prompt, base.steps, base.cfg,
                                      inner_steps=request.inner_steps, cancel=cancel, on_progress=on_progress)
        t_null = time.perf_counter() - t0 - t_invert
        outcome = InversionOutcome(latents=path[0].cpu(), reconstruction=request.image, psnr_db=0.0, request=base,
                                   null_embeddings=null)
        runner = self.generator if save else self.generator.with_store(None)
        controls = {"editing": {"mode": "inversion", "null_text": guided, "inner_steps": request.inner_steps if guided
                                else None}}
        result = runner.run(base, cancel=cancel, start=StartLatents(path[0], 0), hooks=outcome.hooks(),
                            controls=controls, workbench=WORKBENCH)
        image = result.images[0]
        a = np.asarray(image.convert("RGB"), dtype=np.float64)
        b = np.asarray(request.image.convert("RGB"), dtype=np.float64)
        mse = float(((a - b) ** 2).mean())
        psnr = 10 * math.log10(255.0 ** 2 / max(mse, 1e-10))
        return replace(outcome, reconstruction=image, psnr_db=psnr, saved=result.saved,
                       timings={"invert": t_invert, "null_text": t_null, "reconstruct": result.timings["total"],
                                "total": time.perf_counter() - t0})

    # ---- concept edits of the model

    def concept_presets(self):
        """``(templates, presets)`` for this model's kind (``presets/concepts``)."""
        return concept_presets_for(self.model)

    def edit_concepts(self, spec: ConceptEditSpec) -> EditedModel:
        """Compute ``spec`` on this controller's model and apply it to a copy (seconds; nothing shared changes)."""
        if not isinstance(spec, ConceptEditSpec):
            raise InvalidRequest(f"expected a ConceptEditSpec, got {type(spec).__name__}")
        t0 = time.perf_counter()
        delta = compute_delta(self.model, spec)
        return EditedModel(delta=delta, model=edited_copy(self.model, delta), seconds=time.perf_counter() - t0)

    def load_concept_edit(self, path) -> EditedModel:
        """An edit saved by :meth:`save_concept_edit`, applied to a copy of this model (it must be the same model)."""
        t0 = time.perf_counter()
        delta = load_delta(path)
        return EditedModel(delta=delta, model=edited_copy(self.model, delta), seconds=time.perf_counter() - t0)

    @staticmethod
    def save_concept_edit(edited: EditedModel, path):
        """Write the edit (a ``d x d`` matrix and its settings) as ``.safetensors``; returns the path."""
        return save_delta(edited.delta, path)

    def on_edited(self, edited: EditedModel | None) -> EditingController:
        """This controller running on ``edited``'s model copy (the same store); ``self`` for ``None``."""
        if edited is None:
            return self
        return EditingController(edited.model, generator=self.generator.for_model(edited.model))

    def compare_concept_edit(self, edited: EditedModel, base: GenerationRequest, *, save: bool = True,
                             cancel: CancelToken | None = None,
                             on_progress: ProgressCallback | None = None) -> ConceptCompareOutcome:
        """``base`` rendered by the original model and by ``edited``'s copy, on the same seed."""
        # 1. validate
        if not isinstance(edited, EditedModel):
            raise InvalidRequest("apply or load a concept edit first", "concept_edit")
        if not isinstance(base, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(base).__name__}")
        base = self.generator.prepare(replace(base, batch_size=1))
        settings = edited.settings()
        # 2. before, then after (same request, same noise)
        t0 = time.perf_counter()
        runners = [self.generator, self.generator.for_model(edited.model)]
        images, saved = [], []
        for i, runner in enumerate(runners):
            runner = runner if save else runner.with_store(None)
            progress = (lambda step, total, i=i: on_progress(i * total + step, 2 * total)) if on_progress else None
            controls = {"editing": {"mode": "concept edit", "model": "edited" if i else "original",
                                    "concept_edit": settings}}
            outcome = runner.run(base, cancel=cancel, on_progress=progress, controls=controls, workbench=WORKBENCH)
            images.append(outcome.images[0])
            saved += list(outcome.saved)
        return ConceptCompareOutcome(original=images[0], edited=images[1], request=outcome.request,
                                     saved=tuple(saved), timings={"total": time.perf_counter() - t0})

    # ---- helpers

    def _prepare(self, base: GenerationRequest, image) -> tuple[GenerationRequest, torch.Tensor, torch.Tensor]:
        if not isinstance(base, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(base).__name__}")
        if not isinstance(image, Image.Image):
            raise InvalidRequest("give an image (PNG, JPEG or WebP)", "image")
        if base.batch_size != 1:
            raise InvalidRequest(f"an edit makes one image; batch size must be 1, got {base.batch_size}", "batch_size")
        w, h = image.size
        rule = size_rule(self.model)
        if w % rule.multiple or h % rule.multiple or not (rule.minimum <= min(w, h) and max(w, h) <= rule.maximum):
            raise InvalidRequest(f"the image is {w}x{h}; this model takes sides that are multiples of {rule.multiple} "
                                 f"in {rule.minimum}..{rule.maximum}; crop or resize it", "image")
        base = self.generator.prepare(replace(base, width=w, height=h))
        self.engine.validate(base)
        x0 = self._latents_of(image)
        noise = seeded_noise(base.seed, tuple(x0.shape))
        return base, x0, noise

    def _latents_of(self, image: Image.Image) -> torch.Tensor:
        """The image's clean latents ``(1, C, h, w)`` (float32, CPU)."""
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.engine.encode(pixels[None]).float().cpu()

    @staticmethod
    def _mask(mask, size: tuple[int, int], feather: float) -> np.ndarray:
        if mask is None:
            raise InvalidRequest("paint a mask over the region to repaint", "mask")
        hard = mask_array(mask, size)
        if float(hard.max()) <= 0.0:
            raise InvalidRequest("the mask is empty: paint over the region to repaint", "mask")
        return feathered(hard, float(feather))

    def _run(self, base, source, soft, start, hooks, controls, save, cancel, on_preview, on_progress) -> EditOutcome:
        t0 = time.perf_counter()
        runner = self.generator if save else self.generator.with_store(None)
        postprocess = (lambda images: [composite(im, source, soft) for im in images]) if soft is not None else None
        outcome = runner.run(base, cancel=cancel, on_preview=on_preview, on_progress=on_progress, controls=controls,
                             workbench=WORKBENCH, hooks=hooks, start=start, postprocess=postprocess)
        return EditOutcome(images=outcome.images, request=outcome.request, source=source, mask=soft,
                           saved=outcome.saved, timings={**outcome.timings, "total": time.perf_counter() - t0},
                           warnings=outcome.warnings)


class _TwoPartProgress:
    """One progress count over an optional first part (the contrast mask's half render) and the edit itself, so a
    progress bar fills once instead of twice."""

    def __init__(self, on_progress: ProgressCallback | None, second_total: int):
        self.on_progress, self.second_total, self.first_total = on_progress, int(second_total), 0

    def first(self, done: int, total: int) -> None:
        self.first_total = int(total)
        self.on_progress(done, total + self.second_total)

    def second(self, done: int, total: int) -> None:
        self.on_progress(self.first_total + done, self.first_total + total)


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[^\W_]+", text)]


def _blend_words_in(words: tuple[str, ...], source: str, target: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The user's local-blend words split by the prompt they occur in (a word in both counts for both)."""
    if isinstance(words, str) or not all(isinstance(w, str) and w.strip() for w in words):
        raise InvalidRequest(f"blend_words must be a list of words, got {words!r}", "blend_words")
    src_words, dst_words = set(_words(source)), set(_words(target))
    missing = [w for w in words if not set(_words(w)) <= (src_words | dst_words)]
    if missing:
        raise InvalidRequest(f"local-blend word(s) {missing} occur in neither prompt; pick words of the source or the "
                             "edited prompt (e.g. the edited object's noun)", "blend_words")
    in_source = tuple(w.strip() for w in words if set(_words(w)) <= src_words)
    in_target = tuple(w.strip() for w in words if set(_words(w)) <= dst_words)
    return in_source, in_target
