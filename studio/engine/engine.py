"""The one denoising loop.

Every technique runs through :meth:`Engine.generate`; it plugs in via
:class:`~studio.engine.hooks.RunHooks` and never edits this loop.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .cache import LatentCache
from .conditioning import Conditioning, conditioning_key, encode_prompts, plan_prompts, truncation_warnings
from .hooks import (
    ClassicCFG, ComposableCFG, RunHooks, StepContext, attention_processors_installed, check_hooks, extra_role,
)
from .request import (
    Cancelled, CancelToken, GenerationRequest, GenerationResult, InvalidRequest, StartLatents, StepEvent,
)
from .samplers import SAMPLERS, alpha_bar, make_scheduler, predict_x0, step_kwargs
from .validate import validate_request

SEED_MODULUS = 2**32


class Engine:
    """Runs generation requests on one :class:`~studio.models.LoadedModel`.

    Runs on the same model are serialised by ``model.run_lock`` (hooks may
    modify shared modules for the duration of a run)."""

    SAMPLERS = SAMPLERS

    def __init__(self, model):
        self.model = model

    # ------------------------------------------------------------------ public

    def validate(self, req: GenerationRequest, hooks: RunHooks | None = None) -> list[str]:
        """Raise :class:`InvalidRequest` if ``req`` can't run; return warnings
        (e.g. prompts truncated at the text encoder's limit)."""
        validate_request(req, self.model)
        hooks = hooks or RunHooks()
        check_hooks(hooks)
        prompts, _, plan = self._roles(req, hooks, req.steps)
        return truncation_warnings(self.model.tokenizer, prompts, plan)

    def generate(self, req: GenerationRequest, *, hooks: RunHooks | None = None, cancel: CancelToken | None = None,
                 on_step: Callable[[StepEvent], None] | None = None, cache: LatentCache | None = None,
                 resume_from_step: int | None = None, start: StartLatents | None = None,
                 stop_after_step: int | None = None) -> GenerationResult:
        """Generate ``req``; see the package docstring for hooks, cancel and cache. ``start`` begins part-way from
        given latents (see :class:`StartLatents`); it can't be combined with a cache. ``stop_after_step`` ends the
        run after that step (0-based) and its callbacks, without decoding: the result has no images and its
        ``latents`` are the sampler's latents after that step (for callers that only need an early step's event)."""
        t_start = perf_counter()
        hooks = hooks or RunHooks()
        # 1. validate (before touching the model)
        warnings = self.validate(req, hooks)
        scheduler = make_scheduler(self.model.scheduler_config, req.sampler)
        scheduler.set_timesteps(req.steps, device=self.model.device)
        num_steps = len(scheduler.timesteps)
        first_step = start.step if start is not None else resume_from_step or 0
        if stop_after_step is not None and not first_step <= stop_after_step < num_steps:
            raise InvalidRequest(f"stop_after_step must be a step the run takes ({first_step}..{num_steps - 1}), "
                                 f"got {stop_after_step!r}", "stop_after_step")
        prompts, combiner, _ = self._roles(req, hooks, num_steps)
        width, height = req.width or self.model.default_size, req.height or self.model.default_size
        seeds = [req.seed if req.shared_seed else (req.seed + i) % SEED_MODULUS for i in range(req.batch_size)]
        trajectory = (self.model.weights_hash, req.sampler, req.steps, req.seed, width, height, req.batch_size,
                      req.shared_seed)
        if start is not None:
            self._check_start(start, req, num_steps, width, height, cache)
        if resume_from_step is not None:
            if cache is None:
                raise InvalidRequest("resume_from_step needs the LatentCache of the run to resume", "resume_from_step")
            cache.check_resume(trajectory, req, resume_from_step)
        callbacks = list(hooks.step_callbacks) + ([on_step] if on_step is not None else [])
        timings: dict[str, float] = {}

        with self.model.run_lock, torch.no_grad(), \
                attention_processors_installed(self.model.unet, hooks.attention_processors):
            # 2. encode prompts (once per run; reused from the cache when unchanged)
            _check(cancel)
            t0 = perf_counter()
            cond = self._conditioning(prompts, cache, num_steps)
            timings["encode"] = self._elapsed(t0)

            # 3. prepare noise and (when resuming) the recorded state
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            latents = self._initial_noise(generators, width, height) * scheduler.init_noise_sigma
            start_step = 0
            if cache is not None:
                cache.begin(trajectory, req, resume_from_step)
                if resume_from_step is not None:
                    latents = cache.restore(resume_from_step, scheduler, generators, self.model.device)
                    start_step = resume_from_step
            if start is not None:
                latents, start_step = self._start_latents(scheduler, start), start.step

            # 4. denoise
            t0 = perf_counter()
            end = num_steps if stop_after_step is None else stop_after_step + 1
            latents = self._denoise(req, scheduler, latents, start_step, end, cond, combiner, hooks,
                                    generators, callbacks, cancel, cache)
            timings["denoise"] = self._elapsed(t0)

            # 5. decode (not for a run stopped early: its latents are still noisy)
            pixels = None
            if stop_after_step is None:
                _check(cancel)
                t0 = perf_counter()
                pixels = self.decode(latents)
                timings["decode"] = self._elapsed(t0)

        # 6. package
        images = [] if pixels is None else [Image.fromarray(a) for a in to_uint8(pixels)]
        steps_run = max(1, end - start_step)
        timings["per_step"] = timings["denoise"] / steps_run
        timings["total"] = perf_counter() - t_start
        return GenerationResult(images=images, latents=latents, request=req, seeds=seeds, timings=timings,
                                warnings=warnings)

    def timesteps(self, sampler: str, steps: int) -> list[int]:
        """The training-schedule timesteps a run of ``steps`` ``sampler`` steps visits, in sampling order."""
        scheduler = make_scheduler(self.model.scheduler_config, sampler)
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] -> UNet-space latents (the VAE posterior mean, scaled)."""
        vae = self.model.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        x = (pixels.to(device=self.model.device, dtype=vae.dtype) * 2 - 1)
        with self.model.run_lock:
            mean = vae.encode(x).latent_dist.mean
        return ((mean - shift) * vae.config.scaling_factor).to(self.model.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """UNet-space latents -> images as float32 CPU tensor ``(B, 3, H, W)`` in [0, 1]."""
        vae = self.model.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor + shift
        image = vae.decode(scaled, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).float().cpu()

    # ------------------------------------------------------------------ stages

    def _denoise(self, req, scheduler, latents, start, end, cond: Conditioning, combiner, hooks: RunHooks,
                 generators, callbacks, cancel, cache):
        """Steps ``start..end - 1`` of the loop; returns the latents after the last of them."""
        edits, latent_edits = hooks.embedding_edits, hooks.latent_edits
        unet, batch = self.model.unet, req.batch_size
        roles = cond.roles
        timesteps = scheduler.timesteps
        num_steps = len(timesteps)
        extra = step_kwargs(scheduler, generators)
        static = None
        if not edits and cond.plan.static:
            static = torch.cat([cond.at(r, 0).expand(batch, -1, -1) for r in roles])
        for i in range(start, end):
            t = timesteps[i]
            # 4a. cancel point + trajectory record
            _check(cancel)
            if cache is not None:
                cache.record(i, latents, scheduler, generators)
            # 4b. all conditionings in one batched UNet call
            embeds = static if static is not None else self._step_embeds(cond, roles, edits, i, num_steps, batch)
            model_in = scheduler.scale_model_input(latents, t)
            out = unet(torch.cat([model_in] * len(roles)), t, encoder_hidden_states=embeds, return_dict=False)[0]
            eps = dict(zip(roles, out.chunk(len(roles))))
            # 4c. guidance and sampler step
            if hasattr(combiner, "combine_step"):  # a combiner that evaluates the UNet again (e.g. on crops)
                guided = combiner.combine_step(StepContext(
                    step=i, num_steps=num_steps, timestep=t, model_input=model_in, eps=eps, cfg=req.cfg,
                    embeds=dict(zip(roles, embeds.chunk(len(roles)))),
                    denoise=lambda x, e, t=t: unet(x, t, encoder_hidden_states=e, return_dict=False)[0]))
            else:
                guided = combiner.combine(i, eps, req.cfg)
            x_t = latents
            latents = scheduler.step(guided, t, latents, **extra, return_dict=False)[0]
            for latent_edit in latent_edits:
                latents = latent_edit.apply(i, num_steps, latents, scheduler)
            # 4d. observers (x0 is only computed when someone looks)
            if callbacks:
                a_bar = alpha_bar(scheduler, i, t)
                x0 = predict_x0(guided, model_in, a_bar, self.model.prediction_type)
                event = StepEvent(step=i, num_steps=num_steps, timestep=int(t), latents=x_t, x0_pred=x0,
                                  eps_uncond=eps.get("uncond"), eps_cond=eps.get("cond"), eps=eps,
                                  model_input=model_in, guided=guided, alpha_bar=a_bar)
                for cb in callbacks:
                    cb(event)
        return latents

    def _roles(self, req, hooks: RunHooks, num_steps: int) -> tuple[dict[str, str], object, object]:
        """The prompts of the run's roles, the combiner that turns their outputs into one prediction, and the
        parsed plan (with an uncond role, for messages).

        A composed prompt (AND, NOT, part weights) is guided by :class:`ComposableCFG`; it can't be combined
        with a technique's own combiner."""
        plan = plan_prompts(self._prompts(req, hooks, "uncond"), num_steps)
        if plan.composed:
            if hooks.guidance is not None:
                raise InvalidRequest(f"this technique ({type(hooks.guidance).__name__}) guides with its own "
                                     "combiner and takes a single prompt; remove AND / NOT / part weights from the "
                                     "prompt", "prompt")
            combiner = ComposableCFG(plan.part_weights)
        else:
            combiner = hooks.guidance or ClassicCFG()
        needs_uncond = getattr(combiner, "needs_uncond", lambda cfg: True)(req.cfg)
        return self._prompts(req, hooks, "uncond" if needs_uncond else None), combiner, plan

    def _prompts(self, req, hooks: RunHooks, uncond_role: str | None) -> dict[str, str]:
        """Role -> prompt text. Uncond first, then cond, then the combiner's extras
        (the order of the batched UNet call; matches the pipeline's [neg, pos])."""
        prompts = {uncond_role: req.negative_prompt} if uncond_role else {}
        prompts["cond"] = req.prompt
        extras = hooks.guidance.extra_prompts() if hooks.guidance is not None else []
        for i, text in enumerate(extras):
            if not isinstance(text, str):
                raise InvalidRequest(f"guidance extra prompt {i} must be a string, got {type(text).__name__}")
            prompts[extra_role(i)] = text
        return prompts

    def _conditioning(self, prompts: dict[str, str], cache: LatentCache | None, num_steps: int) -> Conditioning:
        key = conditioning_key(self.model, prompts, num_steps)
        cached = cache.conditioning(key) if cache is not None else None
        if cached is not None:
            return cached.to(self.model.device)
        cond = encode_prompts(self.model, prompts, num_steps)
        if cache is not None:
            cache.store_conditioning(cond)
        return cond

    @staticmethod
    def _step_embeds(cond: Conditioning, roles: list[str], edits, step: int, num_steps: int,
                     batch: int) -> torch.Tensor:
        """Every role's embeddings at ``step`` (its scheduled prompt, then the edits), in role order."""
        parts = []
        for role in roles:
            e = cond.at(role, step).expand(batch, -1, -1)
            if edits:
                e = e.clone()
                for edit in edits:
                    e = edit.apply(step, num_steps, e, role)
            parts.append(e)
        return torch.cat(parts)

    def _check_start(self, start: StartLatents, req, num_steps: int, width: int, height: int, cache) -> None:
        if cache is not None:
            raise InvalidRequest("start latents can't be combined with a latent cache", "start")
        f = self.model.vae_scale_factor
        shape = (req.batch_size, self.model.latent_channels, height // f, width // f)
        if not isinstance(start.latents, torch.Tensor) or tuple(start.latents.shape) != shape:
            got = tuple(start.latents.shape) if isinstance(start.latents, torch.Tensor) else type(start.latents)
            raise InvalidRequest(f"start latents must have shape {shape} for this request, got {got}", "start")
        if isinstance(start.step, bool) or not isinstance(start.step, int) or not 0 <= start.step < num_steps:
            raise InvalidRequest(f"start step must be an int in 0..{num_steps - 1}, got {start.step!r}", "start")

    def _start_latents(self, scheduler, start: StartLatents) -> torch.Tensor:
        """Variance-preserving x_t -> the sampler's scale at ``start.step`` (sigma-parameterised samplers keep
        ``x0 + sigma * noise``; their ``scale_model_input`` divides by ``sqrt(sigma^2 + 1)``)."""
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start.step)
        t = scheduler.timesteps[start.step]
        ones = torch.ones(1, device=self.model.device, dtype=self.model.dtype)
        scale = float(scheduler.scale_model_input(ones, t).flatten()[0])
        if hasattr(scheduler, "is_scale_input_called"):
            scheduler.is_scale_input_called = False
        return start.latents.to(device=self.model.device, dtype=self.model.dtype) / scale

    def _initial_noise(self, generators, width: int, height: int) -> torch.Tensor:
        """Gaussian noise drawn on CPU, one generator per image, then moved to the
        device: a seed gives the same image on any device."""
        f = self.model.vae_scale_factor
        shape = (len(generators), self.model.latent_channels, height // f, width // f)
        noise = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=torch.float32)
        return noise.to(device=self.model.device, dtype=self.model.dtype)

    def _elapsed(self, t0: float) -> float:
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        return perf_counter() - t0


def _check(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise Cancelled("generation cancelled")


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` floats in [0, 1] -> ``(B, H, W, 3)`` uint8 (rounded, as diffusers does)."""
    return (pixels.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
