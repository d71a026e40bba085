"""Learned attribute directions: fit the delta with the model's own denoising loss (light training).

Method (Baumann et al. 2024, the "learned" deltas of CompVis/attribute-control): for noisy latents x_t met while
sampling a neutral prompt ("a circle"), the UNet with the delta added at the subject's tokens (scaled by s) should
predict what guidance from the attribute pair predicts:

    target = f(x_t, c_neutral) + s * (f(x_t, c_pos) - f(x_t, c_neg)),   s ~ +-U(0.1, range)
    loss   = || f(x_t, c_neutral + s * delta at subject) - target ||^2

The loss is taken in the model's own output space (epsilon or v). The reference measures it in x0 space; for an
epsilon model that weighs the noisiest steps by (1 - abar) / abar (thousands), so one step of the pool would
dominate; the output space keeps every noise level in play.

with AdamW at lr 0.1 on the single delta vector.

From example images (method ``learned-images``, :class:`ImageLearnSettings`): when the attribute's definition says
how to draw a picture for any slider value (:mod:`studio.attributes.examples`), the delta is fitted with the
model's plain denoising loss on those pictures, the subject's tokens shifted by each picture's own value s:

    loss = || f(noised(x0_s), c + s * delta at subject) - (eps or v) ||^2,   s ~ U(-range, range)

so every value in between is taught, not only what the phrasing pair makes the model draw (Concept Sliders'
image-pair sliders, Gandikota et al. 2023, with a continuum of values instead of a pair). The learning rate
decays along a cosine to a tenth.

The UNet and text encoder are never changed (their weights do
not require grad; only the delta does). A job runs in a background thread with progress, cancel and resume: it
checkpoints every ``checkpoint_every`` steps next to where the result goes and continues from there when
started again; the finished delta is saved to the :class:`~studio.attributes.store.DirectionStore`.
"""

from __future__ import annotations

import io
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from studio.engine import CancelToken, Engine, GenerationRequest, InvalidRequest, RunHooks

from .directions import encode_cond, fill_template, phrasing, subject_token_indices


@dataclass(frozen=True)
class LearnSettings:
    """How hard to train. ``pool_seeds`` x ``pool_steps`` noisy latents are drawn once by sampling the neutral
    prompt; each training step uses ``batch`` of them."""

    steps: int = 600  # on Tiny World 150 steps left the shrinking half and the blue-purple hue weak (README)
    batch: int = 4
    lr: float = 0.1
    pool_seeds: int = 8
    pool_steps: int = 20
    neutral: str = "a {subject}"
    seed: int = 0
    checkpoint_every: int = 50
    scale_max: float | None = None  # largest |s| trained on; None: the attribute's range (the reference: 5)

    def __post_init__(self):
        for name in ("steps", "batch", "pool_seeds", "pool_steps", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer, got {value!r}", name)
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 10:
            raise InvalidRequest(f"lr must be a number in (0, 10], got {self.lr!r}", "lr")
        if "{subject}" not in self.neutral:
            raise InvalidRequest(f"neutral must contain {{subject}}, got {self.neutral!r}", "neutral")
        s = self.scale_max
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.1 < s <= 20):
            raise InvalidRequest(f"scale_max must be a number in (0.1, 20] or None, got {s!r}", "scale_max")


@dataclass(frozen=True)
class ImageLearnSettings:
    """Learning from example images (see the module docstring): ``batch`` pictures per step, drawn afresh."""

    steps: int = 1500  # on Tiny World's size, 48 sweeps: smooth 60% at 1500 steps, 44% at 600 (README)
    batch: int = 8
    lr: float = 0.05
    seed: int = 0
    checkpoint_every: int = 50
    noisy_share: float = 0.0  # share of pictures noised at a timestep from the noisier half (else uniform)

    def __post_init__(self):
        n = self.noisy_share
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 <= n <= 1:
            raise InvalidRequest(f"noisy_share must be a number in [0, 1], got {n!r}", "noisy_share")
        for name in ("steps", "batch", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer, got {value!r}", name)
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 10:
            raise InvalidRequest(f"lr must be a number in (0, 10], got {self.lr!r}", "lr")


@dataclass
class LearnProgress:
    step: int = 0
    total: int = 0
    loss: float | None = None
    state: str = "idle"  # idle | sampling | training | done | cancelled | failed
    message: str = ""
    resumed_from: int | None = None


class DirectionLearner:
    """Learns one delta for (definition, subject) on ``model``; see the module docstring.

    ``run()`` trains on the calling thread and returns the delta; ``start()`` runs it in a daemon thread (poll
    :attr:`progress`, stop with :meth:`cancel`, wait with :meth:`join`). ``checkpoint`` is where partial state
    is kept for resume (``None``: no resume)."""

    def __init__(self, model, definition, subject: str,
                 settings: LearnSettings | ImageLearnSettings = LearnSettings(), *,
                 checkpoint=None, cfg: float = 3.0, on_done: Callable[[torch.Tensor], None] | None = None,
                 on_step: Callable[[LearnProgress], None] | None = None):
        self.model = model
        self.definition = definition
        self.subject = subject
        self.settings = settings
        self.checkpoint = checkpoint
        self.cfg = cfg
        self.on_done = on_done
        self.on_step = on_step
        self.progress = LearnProgress(total=settings.steps)
        self.cancel_token = CancelToken()
        self.result: torch.Tensor | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> DirectionLearner:
        self._thread = threading.Thread(target=self._run_safely, name="direction-learner", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_safely(self) -> None:
        try:
            self.run()
        except BaseException as e:  # noqa: BLE001 - reported through progress
            self.error = e
            self.progress.state, self.progress.message = "failed", f"{type(e).__name__}: {e}"

    # ------------------------------------------------------------------ work

    @property
    def from_images(self) -> bool:
        return isinstance(self.settings, ImageLearnSettings)

    def run(self) -> torch.Tensor | None:
        """Train; returns the delta, or ``None`` when cancelled (the checkpoint keeps what was done)."""
        s, model = self.settings, self.model
        # 1-3. validate, encode, and build the loss of one training step
        batch_loss = self._images_loss() if self.from_images else self._guidance_loss()
        if batch_loss is None:
            return self._cancelled()

        # 4. train the delta (resuming from the checkpoint when there is one)
        self.progress.state = "training"
        delta = torch.zeros(_hidden_size(model), device=model.device, requires_grad=True)
        opt = torch.optim.AdamW([delta], lr=s.lr, weight_decay=0.0)
        step = self._resume(delta, opt)
        rng = random.Random(s.seed * 7919 + step)
        while step < s.steps:
            if self.cancel_token.cancelled:
                self._save_checkpoint(delta, opt, step)
                return self._cancelled()
            if self.from_images:  # cosine decay to a tenth: the loss is noisy (one random timestep per picture)
                for group in opt.param_groups:
                    group["lr"] = s.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / s.steps)))
            with model.run_lock:  # never interleave with a run that installs attention processors
                loss = batch_loss(delta, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            step += 1
            self.progress.step, self.progress.loss = step, loss.item()
            if self.on_step is not None:
                self.on_step(self.progress)
            if step % s.checkpoint_every == 0 and step < s.steps:
                self._save_checkpoint(delta, opt, step)
        self.result = delta.detach().float().cpu()
        if self.on_done is not None:
            self.on_done(self.result)
        if self.checkpoint is not None:
            try:
                os.remove(self.checkpoint)
            except FileNotFoundError:
                pass
        resumed = f" (resumed at step {self.progress.resumed_from})" if self.progress.resumed_from else ""
        self.progress.state = "done"
        self.progress.message = f"learned in {step} steps{resumed}, loss {self.progress.loss:.4g}"
        return self.result

    def _guidance_loss(self) -> Callable[[torch.Tensor, random.Random], torch.Tensor] | None:
        """The reference's loss: match guidance from the phrasing pair on noisy latents of the neutral prompt."""
        s, model = self.settings, self.model
        # 1. validate: every prompt must contain the subject
        templates = list(self.definition.templates)
        prompts = {kind: [fill_template(t, phrasing(p, self.subject)) for t in templates]
                   for kind, p in (("neutral", s.neutral), ("pos", self.definition.positive),
                                   ("neg", self.definition.negative))}
        neutral_idx = [subject_token_indices(model.tokenizer, p, self.subject) for p in prompts["neutral"]]

        # 2. encode all prompts once
        enc = {kind: encode_cond(model, texts) for kind, texts in prompts.items()}

        # 3. pool of noisy latents from sampling the neutral prompt
        self.progress.state = "sampling"
        pool = self._latent_pool(prompts["neutral"][0])
        if pool is None:
            return None
        unet = model.unet
        top = self.definition.range if s.scale_max is None else s.scale_max

        def batch_loss(delta: torch.Tensor, rng: random.Random) -> torch.Tensor:
            picks = [rng.randrange(len(pool)) for _ in range(s.batch)]
            tmpl = [rng.randrange(len(templates)) for _ in range(s.batch)]
            scales = torch.tensor([rng.uniform(0.1, top) * rng.choice((-1, 1))
                                   for _ in range(s.batch)], device=model.device)
            x_t = torch.stack([pool[i][0] for i in picks]).to(model.device)
            t = torch.tensor([pool[i][1] for i in picks], device=model.device)
            c_neu, c_pos, c_neg = (enc[k][tmpl] for k in ("neutral", "pos", "neg"))
            with torch.no_grad():
                out = unet(torch.cat([x_t] * 3), torch.cat([t] * 3),
                           encoder_hidden_states=torch.cat([c_neu, c_pos, c_neg]).to(unet.dtype)).sample.float()
                f_neu, f_pos, f_neg = out.chunk(3)
                target = f_neu + scales.view(-1, 1, 1, 1) * (f_pos - f_neg)
            mask = torch.zeros_like(c_neu)
            for row, ti in enumerate(tmpl):
                mask[row, list(neutral_idx[ti])] = 1.0
            edited = c_neu + mask * scales.view(-1, 1, 1) * delta.view(1, 1, -1)
            pred = unet(x_t, t, encoder_hidden_states=edited.to(unet.dtype)).sample.float()
            return ((pred - target) ** 2).mean()

        return batch_loss

    def _images_loss(self) -> Callable[[torch.Tensor, random.Random], torch.Tensor]:
        """The denoising loss on example pictures drawn for random slider values (module docstring)."""
        from diffusers import DDPMScheduler

        from .definitions import model_kind
        from .examples import TinyWorldExamples

        model, definition = self.model, self.definition
        # 1. validate: the definition must say how to draw examples, for a subject the generator draws
        if definition.examples is None:
            raise InvalidRequest(f"{definition.name!r} has no example images to learn from (its preset has no "
                                 "\"examples\"); use the 'learned' method instead", "method")
        if model_kind(model) != "tinyworld":
            raise InvalidRequest("example pictures are drawn by Tiny World's scene generator, so learned-images "
                                 f"directions need a Tiny World model (this one is {model_kind(model)})", "method")
        try:
            source = TinyWorldExamples(definition.examples, self.subject, value_range=definition.range)
        except ValueError as e:
            raise InvalidRequest(str(e), "subject") from None
        noise_schedule = DDPMScheduler.from_config(model.scheduler_config)
        alphas = noise_schedule.alphas_cumprod.to(model.device)
        engine, unet = Engine(model), model.unet

        def batch_loss(delta: torch.Tensor, rng: random.Random) -> torch.Tensor:
            # 2. draw and encode this step's pictures and captions
            examples = [source.draw(rng) for _ in range(self.settings.batch)]
            pixels = torch.stack([torch.from_numpy(np.array(e.image)).permute(2, 0, 1) for e in examples]) / 255.0
            x0 = engine.encode(pixels).float()
            captions = [e.caption for e in examples]
            with torch.no_grad():
                cond = encode_cond(model, captions)
            mask = torch.zeros_like(cond)
            for row, caption in enumerate(captions):
                mask[row, list(subject_token_indices(model.tokenizer, caption, self.subject))] = 1.0
            # 3. noise them and ask for the model's usual target
            gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
            noise = torch.randn(x0.shape, generator=gen).to(model.device)
            t = torch.randint(0, len(alphas), (len(examples),), generator=gen)
            # a share of the pictures at the noisier half, where an object's size is decided
            noisier = torch.rand(len(examples), generator=gen) < self.settings.noisy_share
            t = torch.where(noisier, len(alphas) // 2 + t // 2, t).to(model.device)
            abar = alphas[t].view(-1, 1, 1, 1)
            x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
            target = abar.sqrt() * noise - (1 - abar).sqrt() * x0 if model.prediction_type == "v_prediction" \
                else noise
            scales = torch.tensor([e.value for e in examples], device=model.device)
            edited = cond + mask * scales.view(-1, 1, 1) * delta.view(1, 1, -1)
            pred = unet(x_t.to(unet.dtype), t, encoder_hidden_states=edited.to(unet.dtype)).sample.float()
            return ((pred - target) ** 2).mean()

        return batch_loss

    def _latent_pool(self, neutral_prompt: str) -> list[tuple[torch.Tensor, int]] | None:
        """(x_t, timestep) at every step of DDIM sampling (no input scaling) of the neutral prompt."""
        pool: list[tuple[torch.Tensor, int]] = []

        def keep(event):
            for row in event.latents:
                pool.append((row.detach().to("cpu", copy=True), int(event.timestep)))

        engine = Engine(self.model)
        req = GenerationRequest(prompt=neutral_prompt, sampler="DDIM", steps=self.settings.pool_steps, cfg=self.cfg,
                                seed=self.settings.seed, batch_size=self.settings.pool_seeds)
        from studio.engine import Cancelled

        try:
            engine.generate(req, hooks=RunHooks(step_callbacks=[keep]), cancel=self.cancel_token)
        except Cancelled:
            return None
        return pool

    def _resume(self, delta: torch.Tensor, opt) -> int:
        if self.checkpoint is None or not os.path.isfile(self.checkpoint):
            return 0
        try:
            state = torch.load(self.checkpoint, map_location="cpu")
            with torch.no_grad():
                delta.copy_(state["delta"].to(delta.device))
            opt.load_state_dict(state["opt"])
            self.progress.message = f"resumed at step {state['step']}"
            self.progress.resumed_from = int(state["step"])
            return int(state["step"])
        except Exception:  # noqa: BLE001 - an unreadable checkpoint means starting over, not failing
            return 0

    def _save_checkpoint(self, delta: torch.Tensor, opt, step: int) -> None:
        if self.checkpoint is None:
            return
        from studio.controllers.generate import write_atomic

        buf = io.BytesIO()
        torch.save({"delta": delta.detach().cpu(), "opt": opt.state_dict(), "step": step, "saved": time.time()}, buf)
        write_atomic(Path(self.checkpoint), buf.getvalue())

    def _cancelled(self) -> None:
        self.progress.state = "cancelled"
        self.progress.message = f"cancelled at step {self.progress.step}; starting again resumes"
        return None



def _hidden_size(model) -> int:
    """Width of the text encoder's output, which a delta lives in."""
    return int(encode_cond(model, [""]).shape[-1])
