"""The inspection workbench's controller (no UI imports): see guidance work, step by step, token by token.

* :meth:`InspectionController.run` generates one image while recording every step (x_t, the x0 prediction, each
  role's prediction; :mod:`studio.inspection.trajectory`) and, when asked, the cross-attention maps of every token
  (:mod:`studio.inspection.attention`, a processor installed for this run only). Progress streams per step.
* Views of a finished :class:`InspectionRun`: frames of the filmstrip, guidance curves and difference heat maps,
  per-word attention maps broken down by resolution, layer and step, overlays.
* :meth:`classify` (diffusion classifier) and :meth:`information` (token information maps) on any image.
* :meth:`branch` re-runs a finished run from one of its steps with changed settings.
* :meth:`export` writes a panel's data (``.npz``/JSON) and figures (PNG, animated WebP/GIF).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.attributes.directions import subject_token_indices
from studio.engine import (
    SAMPLERS, CancelToken, Engine, GenerationRequest, InvalidRequest, LatentCache, RunHooks, StartLatents,
)
from studio.engine.conditioning import plan_prompts
from studio.inspection import CrossAttentionRecorder
from studio.inspection.classifier import DEFAULT_STAGES, Classification, ClassifierStage, classify_latents
from studio.inspection.figures import heat_image, line_plot, map_figure, overlay, scatter_plot
from studio.inspection.files import contact_sheet, npz_bytes, png_bytes, safe_name, write_files
from studio.inspection.information import DEFAULT_LEVELS, DEFAULT_SAMPLES, InformationMaps, information_maps
from studio.inspection.trajectory import (
    ADAPTIVE_GUIDANCE_THRESHOLD, GuidanceStats, TrajectoryRecorder, difference_map, guidance_stats,
)
from studio.prompting import parse, plain_text, schedule

from .attributes import animate
from .generate import GenerateController

WORKBENCH = "inspection"
FRAME_KINDS = ("x_t", "x0")
PANELS = ("trajectory", "guidance", "attention")
MAX_CANDIDATE_CHARS = 300


# ----------------------------------------------------------------------------- requests and outcomes


@dataclass(frozen=True)
class InspectRequest:
    """An inspection run: one image of ``base`` (batch size 1), every step recorded; ``attention`` also records
    the cross-attention maps; ``stream_word`` is the word whose map streams with the progress."""

    base: GenerationRequest
    attention: bool = True
    stream_word: str | None = None


@dataclass(frozen=True)
class InspectionProgress:
    step: int
    num_steps: int
    x0_image: Image.Image
    attention_image: Image.Image | None = None


@dataclass(frozen=True)
class BranchRequest:
    """Re-run from step ``step`` of a finished run; ``None`` keeps the run's value. ``hooks`` add techniques (e.g.
    a slider's embedding edit) to the branch."""

    step: int
    prompt: str | None = None
    negative_prompt: str | None = None
    cfg: float | None = None
    sampler: str | None = None
    hooks: RunHooks | None = None


@dataclass(frozen=True)
class BranchOutcome:
    original: Image.Image
    branched: Image.Image
    request: GenerationRequest
    step: int
    exact: bool  # resumed from the recorded sampler state (True) or re-entered from x_t under another sampler
    warnings: tuple[str, ...] = ()
    attention: CrossAttentionRecorder | None = None  # the branch's own maps (steps from the branch point on)


@dataclass(frozen=True)
class ClassifyRequest:
    """Classify ``image`` among ``candidates`` (prompts); ``stages`` prune candidates as samples grow."""

    image: Image.Image
    candidates: tuple[str, ...]
    stages: tuple[ClassifierStage, ...] = DEFAULT_STAGES
    seed: int = 0
    loss: str = "l2"


@dataclass(frozen=True)
class InformationRequest:
    """Information maps of one or two words of ``prompt`` for ``image``."""

    image: Image.Image
    prompt: str
    tokens: tuple[str, ...]
    levels: int = DEFAULT_LEVELS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    space: str = "pixel"  # where the maps are drawn: "pixel" (decoded predictions) or "latent" (upsampled latent grid)


@dataclass
class InspectionRun:
    """A finished inspection run (one per browser session; decoded frames are cached on it)."""

    request: GenerationRequest
    image: Image.Image
    trajectory: TrajectoryRecorder
    attention: CrossAttentionRecorder | None
    words: dict[str, tuple[int, ...]]  # word of the prompt -> its token positions
    role_texts: dict[str, str]  # "uncond", "cond", "cond:1", ... -> the prompt text of that role
    cache: LatentCache
    model_name: str
    timings: dict[str, float] = field(default_factory=dict)
    _frames: dict = field(default_factory=dict, repr=False)

    @property
    def num_steps(self) -> int:
        return len(self.trajectory.records)

    def settings(self) -> dict:
        return {"workbench": WORKBENCH, "model": self.model_name, "request": asdict(self.request)}


# ----------------------------------------------------------------------------- the controller


class InspectionController:
    """Inspection on ``model``. ``generator`` (optional) lends its defaults and seed resolution. A branch takes any
    technique's hooks (``BranchRequest.hooks``, e.g. an attribute slider's embedding edit)."""

    def __init__(self, model, generator: GenerateController | None = None):
        self.model = model
        self.engine = Engine(model)
        self.generator = generator or GenerateController(model, None)

    def defaults(self) -> GenerationRequest:
        return self.generator.defaults()

    # ---- runs

    def run(self, request: InspectRequest, *, cancel: CancelToken | None = None,
            on_step: Callable[[InspectionProgress], None] | None = None) -> InspectionRun:
        # 1. validate
        if not isinstance(request, InspectRequest):
            raise InvalidRequest(f"expected an InspectRequest, got {type(request).__name__}")
        base = self.generator.prepare(request.base)
        if base.batch_size != 1:
            raise InvalidRequest(f"an inspection run makes one image; batch size must be 1, got {base.batch_size}",
                                 "batch_size")
        self.engine.validate(base)
        plan = plan_prompts({"uncond": base.negative_prompt, "cond": base.prompt}, base.steps)
        words = self.prompt_words(base.prompt, base.steps)
        stream = request.stream_word
        if stream is not None and stream not in words:
            raise InvalidRequest(f"stream word {stream!r} is not a word of the prompt; pick one of {list(words)}",
                                 "stream_word")

        # 2. recorders: trajectory always, attention on request (the cond rows of the batched call)
        trajectory = TrajectoryRecorder(self.model.prediction_type)
        f = self.model.vae_scale_factor
        latent_hw = (base.height // f, base.width // f)
        attention = CrossAttentionRecorder(self._cond_rows(base), latent_hw) if request.attention else None
        callbacks: list = [trajectory]
        processors = None
        if attention is not None:
            callbacks.insert(0, attention.on_step)
            processors = attention.processors
        if on_step is not None:
            callbacks.append(self._progress(on_step, attention, words.get(stream) if stream else None, base))

        # 3. run (the engine removes the processors after the run, even on errors)
        cache = LatentCache()
        t0 = time.perf_counter()
        result = self.engine.generate(base, hooks=RunHooks(attention_processors=processors, step_callbacks=callbacks),
                                      cancel=cancel, cache=cache)
        return InspectionRun(request=base, image=result.images[0], trajectory=trajectory, attention=attention,
                             words=words, role_texts={"uncond": base.negative_prompt, **plan.part_texts},
                             cache=cache, model_name=getattr(self.model, "name", "model"),
                             timings={**result.timings, "wall": time.perf_counter() - t0})

    def _progress(self, on_step, attention, stream_tokens, base):
        size = (base.height, base.width)

        def callback(event) -> None:
            x0 = self._decode(event.x0_pred[:1])
            heat = None
            if attention is not None and stream_tokens:
                m = attention.word_map(stream_tokens, size).numpy()
                heat = overlay(x0, m, 0.6)
            on_step(InspectionProgress(step=event.step, num_steps=event.num_steps, x0_image=x0, attention_image=heat))

        return callback

    def prompt_words(self, prompt: str, steps: int) -> dict[str, tuple[int, ...]]:
        """Words of the prompt's first part (at its last step) -> token positions, in reading order."""
        parsed = parse(prompt)
        text = plain_text(schedule(parsed.parts[0], max(1, steps))[-1])
        words: dict[str, tuple[int, ...]] = {}
        for word in re.findall(r"[^\W_]+", text):
            key = word.lower()
            if key in words:
                continue
            try:
                words[key] = subject_token_indices(self.model.tokenizer, text, word)
            except InvalidRequest:  # past the encoder's limit
                continue
        return words

    # ---- views of a run

    def frame(self, run: InspectionRun, step: int, kind: str = "x0") -> Image.Image:
        """Step ``step``'s image: ``"x_t"`` (the noisy latents), ``"x0"`` (the guided prediction) or a role name
        (``"uncond"``, ``"cond"``, ``"cond:1"``, ``"guided"``: the clean image that role's prediction implies)."""
        rec = self._record(run, step)
        allowed = (*FRAME_KINDS, "guided", *rec.eps)
        if kind not in allowed:
            raise InvalidRequest(f"frame kind must be one of {', '.join(allowed)}, got {kind!r}", "kind")
        key = (step, kind)
        if key not in run._frames:
            latents = rec.x_t if kind == "x_t" else rec.x0 if kind == "x0" else rec.x0_of(kind)
            run._frames[key] = self._decode(latents[None])
        return run._frames[key]

    def filmstrip(self, run: InspectionRun, kind: str = "x0") -> list[Image.Image]:
        return [self.frame(run, s, kind) for s in range(run.num_steps)]

    def animation(self, run: InspectionRun, kind: str = "x0", fmt: str = "webp") -> bytes:
        return animate(self.filmstrip(run, kind), fmt=fmt)

    def guidance(self, run: InspectionRun, threshold: float = ADAPTIVE_GUIDANCE_THRESHOLD) -> GuidanceStats:
        if not 0.0 < threshold <= 1.0:
            raise InvalidRequest(f"adaptive-guidance threshold must be in (0, 1], got {threshold}", "threshold")
        return guidance_stats(run.trajectory.records, threshold)

    def guidance_plots(self, run: InspectionRun, threshold: float = ADAPTIVE_GUIDANCE_THRESHOLD) -> \
            tuple[Image.Image, Image.Image]:
        """(guidance norm over steps, cosine over steps with the threshold and the switch steps marked)."""
        stats = self.guidance(run, threshold)
        labels = {role: self.role_label(run, role) for role in stats.norm}
        markers = {f"AG stops CFG ({labels[r]})": s for r, s in stats.switch_step.items() if s is not None}
        norm = line_plot(stats.steps, {labels[r]: v for r, v in stats.norm.items()}, xlabel="step",
                         ylabel="RMS ||eps_c - eps_u||", title="guidance norm per step")
        cosine = line_plot(stats.steps, {labels[r]: v for r, v in stats.cosine.items()}, xlabel="step",
                           ylabel="cos(eps_c, eps_u)", title=f"cosine per step (threshold {threshold:g})",
                           markers=markers, hline=threshold)
        return norm, cosine

    def difference(self, run: InspectionRun, step: int, role: str = "cond") -> Image.Image:
        rec = self._record(run, step)
        if role not in rec.eps or role == "uncond":
            raise InvalidRequest(f"role must be a conditional role of this run ({[r for r in rec.eps if r != 'uncond']})"
                                 f", got {role!r}", "role")
        try:
            m = difference_map(rec, role).numpy()
        except ValueError as e:
            raise InvalidRequest(str(e), "cfg") from None
        return heat_image(m, size=(run.request.width, run.request.height))

    def word_map(self, run: InspectionRun, word: str, *, steps=None, layers=None,
                 resolution: str | None = None) -> np.ndarray:
        """The DAAM map ``(H, W)`` of ``word``, over all steps and layers or the chosen ones (``resolution`` like
        ``"8x8"`` picks that size's layers)."""
        if run.attention is None:
            raise InvalidRequest("this run did not record attention; run again with attention capture on",
                                 "attention")
        key = str(word).lower()
        if key not in run.words:
            raise InvalidRequest(f"{word!r} is not a word of the prompt; pick one of {list(run.words)}", "word")
        if resolution is not None:
            groups = run.attention.resolutions()
            if resolution not in groups:
                raise InvalidRequest(f"resolution must be one of {list(groups)}, got {resolution!r}", "resolution")
            layers = groups[resolution]
        size = (run.request.height, run.request.width)
        return run.attention.word_map(run.words[key], size, steps=steps, layers=layers).numpy()

    def word_overlay(self, run: InspectionRun, word: str, opacity: float = 0.6, **breakdown) -> Image.Image:
        if not 0.0 <= opacity <= 1.0:
            raise InvalidRequest(f"opacity must be in 0..1, got {opacity}", "opacity")
        return overlay(run.image, self.word_map(run, word, **breakdown), opacity)

    # ---- classifier, information maps, branching

    def classify(self, request: ClassifyRequest, *, cancel: CancelToken | None = None) -> Classification:
        candidates = tuple(c.strip() for c in request.candidates if c and c.strip())
        for c in candidates:
            if len(c) > MAX_CANDIDATE_CHARS:
                raise InvalidRequest(f"candidate prompts are limited to {MAX_CANDIDATE_CHARS} characters", "candidates")
        x0 = self.latents_of(request.image)
        return classify_latents(self.model, x0, list(candidates), stages=request.stages, seed=request.seed,
                                loss=request.loss, cancel=cancel)

    def classification_plot(self, result: Classification) -> Image.Image:
        series = {}
        for k, name in enumerate(result.candidates):
            pairs = [(t, e) for t, e in zip(result.timesteps, result.errors[k]) if e == e]
            series[f"{name} ({result.mean_error[k]:.4f})"] = ([p[0] for p in pairs], [p[1] for p in pairs])
        return scatter_plot(series, xlabel="timestep", ylabel="denoising error (mean sq.)",
                            title=f"diffusion classifier: {result.best!r} ({result.evaluations} UNet evals)")

    def information_levels_plot(self, result: InformationMaps) -> Image.Image:
        """Where along the noise levels each word's information sits (the integrand's image total per level)."""
        names = {"i1": result.tokens[0]}
        if len(result.tokens) == 2:
            names.update(i2=result.tokens[1], i12=" + ".join(result.tokens))
        series = {label: result.level_totals(key) for key, label in names.items() if key in result.level_maps}
        return line_plot(result.log_snrs, series, xlabel="log-SNR (high = little noise)",
                         ylabel="1/2 E||eps diff||^2 (image total)", title="information per noise level")

    def information_overlay(self, result: InformationMaps, image: Image.Image, name: str = "i1",
                            opacity: float = 0.6) -> Image.Image:
        """One information map (``"i1"`` by default: the first word's) blended over the image it explains."""
        return overlay(image, result.maps[name].numpy(), opacity)

    def information(self, request: InformationRequest, *, cancel: CancelToken | None = None) -> InformationMaps:
        x0 = self.latents_of(request.image)
        return information_maps(self.model, x0, request.prompt, list(request.tokens), levels=request.levels,
                                samples=request.samples, seed=request.seed, size=request.image.size[::-1],
                                space=request.space, decode=self.engine.decode, cancel=cancel)

    def branch(self, run: InspectionRun, request: BranchRequest, *, cancel: CancelToken | None = None) -> BranchOutcome:
        # 1. validate
        step = request.step
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < run.num_steps:
            raise InvalidRequest(f"branch step must be an int in 0..{run.num_steps - 1}, got {step!r}", "step")
        changes = {k: v for k, v in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt),
                                     ("cfg", request.cfg), ("sampler", request.sampler)) if v is not None}
        if "sampler" in changes and changes["sampler"] not in SAMPLERS:
            raise InvalidRequest(f"unknown sampler {changes['sampler']!r}; allowed: {', '.join(SAMPLERS)}", "sampler")
        new = replace(run.request, **changes)
        hooks = request.hooks or RunHooks()
        if hooks.attention_processors is not None:
            raise InvalidRequest("a branch records attention like its run did; it can't take other attention "
                                 "processors", "hooks")
        self.engine.validate(new, hooks)
        # the branch computes attention the way its run did (recording processors when the run recorded), so an
        # unchanged branch reproduces the run to the bit, and its maps can be compared with the run's
        attention = None
        if run.attention is not None:
            attention = CrossAttentionRecorder(self._cond_rows(new), run.attention.latent_hw)
            attention.step = step
            hooks = replace(hooks, attention_processors=attention.processors,
                            step_callbacks=[attention.on_step, *hooks.step_callbacks])

        # 2. same sampler: resume the recorded state exactly (a fork, so the original stays branchable)
        if new.sampler == run.request.sampler:
            result = self.engine.generate(new, hooks=hooks, cancel=cancel, cache=run.cache.fork(),
                                          resume_from_step=step)
            return BranchOutcome(run.image, result.images[0], new, step, exact=True, attention=attention)

        # 3. another sampler: re-enter its schedule at the nearest timestep with the recorded x_t
        rec = run.trajectory.records[step]
        timesteps = self.engine.timesteps(new.sampler, new.steps)
        j = min(range(len(timesteps)), key=lambda k: abs(timesteps[k] - rec.timestep))
        warnings = []
        if timesteps[j] != rec.timestep:
            warnings.append(f"{new.sampler} has no step at timestep {rec.timestep}; continued from its step {j} "
                            f"(timestep {timesteps[j]})")
        start = StartLatents(rec.x_t[None].to(self.model.device, self.model.dtype), j)
        if attention is not None:
            attention.step = j
        result = self.engine.generate(new, hooks=hooks, cancel=cancel, start=start)
        return BranchOutcome(run.image, result.images[0], new, step, exact=False, warnings=tuple(warnings),
                             attention=attention)

    # ---- export

    def export(self, run: InspectionRun, panel: str, folder: Path | str, *,
               threshold: float = ADAPTIVE_GUIDANCE_THRESHOLD) -> list[Path]:
        """Write ``panel`` (``trajectory``, ``guidance`` or ``attention``) of ``run`` into ``folder``: data as
        ``.npz`` + JSON, figures as PNG (the filmstrip also as animated WebP and GIF). Files are staged first."""
        if panel not in PANELS:
            raise InvalidRequest(f"panel must be one of {', '.join(PANELS)}, got {panel!r}", "panel")
        files: dict[str, bytes] = {}
        records = run.trajectory.records
        meta = run.settings()
        if panel == "trajectory":
            files["trajectory.npz"] = npz_bytes(x_t=torch.stack([r.x_t for r in records]).numpy(),
                                           x0=torch.stack([r.x0 for r in records]).numpy(),
                                           timesteps=np.array([r.timestep for r in records]),
                                           alpha_bar=np.array([r.alpha_bar for r in records]))
            for fmt in ("webp", "gif"):
                files[f"x0.{fmt}"] = self.animation(run, "x0", fmt)
                files[f"x_t.{fmt}"] = self.animation(run, "x_t", fmt)
            files["filmstrip.png"] = png_bytes(contact_sheet(self.filmstrip(run, "x_t") + self.filmstrip(run, "x0"), run.num_steps))
        elif panel == "guidance":
            stats = self.guidance(run, threshold)
            meta["guidance"] = stats.to_json()
            meta["roles"] = {r: self.role_label(run, r) for r in run.trajectory.roles}
            files["guidance.npz"] = npz_bytes(**{f"eps_{r.replace(':', '_')}": torch.stack([x.eps[r] for x in records])
                                            .numpy() for r in run.trajectory.roles})
            norm, cosine = self.guidance_plots(run, threshold)
            files["guidance_norm.png"], files["guidance_cosine.png"] = png_bytes(norm), png_bytes(cosine)
        else:
            maps = {w: self.word_map(run, w) for w in run.words}
            meta["words"] = {w: list(idx) for w, idx in run.words.items()}
            meta["resolutions"] = run.attention.resolutions()
            files["attention.npz"] = npz_bytes(**{safe_name(w): m for w, m in maps.items()})
            for w, m in maps.items():
                files[f"attention_{safe_name(w)}.png"] = png_bytes(map_figure(m, title=f"'{w}'", label="attention (DAAM)",
                                                                     image=run.image))
        files[f"{panel}.json"] = json.dumps(meta, indent=2, default=str).encode()
        return write_files(Path(folder), files)

    def export_classification(self, result: Classification, folder: Path | str) -> list[Path]:
        return write_files(Path(folder), {
            "classification.json": json.dumps(result.to_json(), indent=2).encode(),
            "classification.npz": npz_bytes(errors=np.array(result.errors), timesteps=np.array(result.timesteps)),
            "classification.png": png_bytes(self.classification_plot(result))})

    def export_information(self, result: InformationMaps, image: Image.Image, folder: Path | str) -> list[Path]:
        files = {"information.json": json.dumps(result.to_json(), indent=2).encode(),
                 "information.npz": npz_bytes(**{k: v.numpy() for k, v in result.maps.items()})}
        for name, m in result.maps.items():
            files[f"information_{name}.png"] = png_bytes(map_figure(m.numpy(), title=name, label="nats / pixel",
                                                               signed=name == "synergy", image=image))
        files["information_levels.png"] = png_bytes(self.information_levels_plot(result))
        files["information_levels.npz"] = npz_bytes(log_snrs=np.asarray(result.log_snrs),
                                                    **{k: v.numpy() for k, v in result.level_maps.items()})
        return write_files(Path(folder), files)

    # ---- helpers

    def latents_of(self, image: Image.Image) -> torch.Tensor:
        """An uploaded or generated image as clean latents ``(C, h, w)`` at a size the model can take."""
        if not isinstance(image, Image.Image):
            raise InvalidRequest("give an image (PNG, JPEG or WebP)", "image")
        f = 8 * self.model.vae_scale_factor
        w, h = image.size
        if w < f or h < f or w % self.model.vae_scale_factor or h % self.model.vae_scale_factor:
            side = self.model.default_size
            image = image.resize((side, side), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.engine.encode(pixels[None])[0].float().cpu()

    def _decode(self, latents: torch.Tensor) -> Image.Image:
        pixels = self.engine.decode(latents.to(self.model.device, self.model.dtype))
        return Image.fromarray((pixels[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))

    @staticmethod
    def _cond_rows(req: GenerationRequest) -> slice:
        """Where the prompt's row sits in the step's batched UNet call (after the uncond row when there is one)."""
        plan = plan_prompts({"uncond": req.negative_prompt, "cond": req.prompt}, req.steps)
        first = int(plan.composed or req.cfg != 1.0)
        return slice(first, first + 1)

    @staticmethod
    def _record(run: InspectionRun, step: int):
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < run.num_steps:
            raise InvalidRequest(f"step must be an int in 0..{run.num_steps - 1}, got {step!r}", "step")
        return run.trajectory.records[step]

    @staticmethod
    def role_label(run: InspectionRun, role: str) -> str:
        """``"cond: a red circle"``: a role with the start of its prompt, for captions and legends."""
        text = run.role_texts.get(role, role)
        return f"{role}: {text[:40]}" if text else role
