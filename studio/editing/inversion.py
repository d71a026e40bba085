"""Inverting a real image so it can be reconstructed and edited.

* :func:`ddim_invert`: DDIM inversion (Song et al., "Denoising Diffusion Implicit Models", 2021; as used by Mokady
  et al., "Null-text Inversion", 2023): the deterministic DDIM update run backwards, from the image's clean latents
  up to x_T, predicting the noise at each level under the prompt without guidance. Sampling DDIM from that x_T with
  the same prompt at CFG 1 reconstructs the image.
* :func:`null_text_optimize`: null-text optimisation (Mokady et al. 2023). Guided sampling (CFG > 1) drifts from
  the inversion's path; for each step, optimise the *unconditional* embedding so the guided DDIM step lands on the
  inversion's latent of the next level. The result is one unconditional embedding per step
  (:class:`NullTextEmbeddings`, an embedding edit), with which guided sampling reconstructs the image and
  prompt-to-prompt edits it at full guidance strength. The model is never modified (gradients only reach the
  embedding).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from studio.engine import CancelToken, Cancelled, make_scheduler
from studio.engine.conditioning import encode_texts
from studio.inspection.trajectory import to_epsilon


def _schedule(model, steps: int):
    scheduler = make_scheduler(model.scheduler_config, "DDIM")
    scheduler.set_timesteps(steps)
    table = scheduler.alphas_cumprod.double()
    ratio = model.scheduler_config.get("num_train_timesteps", 1000) // steps
    final = float(scheduler.final_alpha_cumprod)
    timesteps = scheduler.timesteps.tolist()  # descending, as sampled
    prev = [float(table[t - ratio]) if t - ratio >= 0 else final for t in timesteps]
    return timesteps, [float(table[t]) for t in timesteps], prev


def _check(cancel: CancelToken | None, what: str) -> None:
    if cancel is not None and cancel.cancelled:
        raise Cancelled(f"{what} cancelled")


@torch.no_grad()
def ddim_invert(model, x0: torch.Tensor, prompt: str, steps: int, *, cancel: CancelToken | None = None,
                trajectory: bool = False):
    """x_T ``(1, C, h, w)`` (variance-preserving scale, at the first timestep of a ``steps``-step DDIM schedule) whose
    DDIM sampling under ``prompt`` at CFG 1 gives back ``x0`` (up to the inversion's error). With ``trajectory``,
    the list ``[x_T, ..., x_(last step), x0]``: entry ``i`` is the latent entering sampling step ``i``, the last
    entry the clean latents."""
    timesteps, a_now, a_prev = _schedule(model, steps)
    embeds = encode_texts(model, [prompt]).to(model.device, model.dtype)
    latent = x0.to(model.device, torch.float64)
    path = [latent]
    with model.run_lock:
        for i in reversed(range(len(timesteps))):
            _check(cancel, "inversion")
            out = model.unet(latent.to(model.dtype), timesteps[i], encoder_hidden_states=embeds,
                             return_dict=False)[0].double()
            eps = to_epsilon(out, latent, a_now[i], model.prediction_type)
            clean = (latent - math.sqrt(1 - a_prev[i]) * eps) / math.sqrt(a_prev[i])
            latent = math.sqrt(a_now[i]) * clean + math.sqrt(1 - a_now[i]) * eps
            path.append(latent)
    if trajectory:
        return [p.to(model.dtype) for p in reversed(path)]
    return latent.to(model.dtype)


def null_text_optimize(model, path: list[torch.Tensor], prompt: str, negative: str, steps: int, cfg: float, *,
                       inner_steps: int = 10, lr: float = 1e-2, cancel: CancelToken | None = None,
                       on_progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-step unconditional embeddings ``(steps, tokens, dim)`` for guided DDIM sampling (``cfg``) from
    ``path[0]`` to follow ``path`` (from :func:`ddim_invert` with ``trajectory=True``). Each step starts from the
    previous step's result and takes up to ``inner_steps`` Adam steps (learning rate decaying over the steps, early
    stop once the step's error is small), as in Mokady et al."""
    timesteps, a_now, a_prev = _schedule(model, steps)
    if len(path) != len(timesteps) + 1:
        raise ValueError(f"the trajectory has {len(path)} latents; a {steps}-step inversion has {steps + 1}")
    dt = model.dtype
    cond = encode_texts(model, [prompt]).to(model.device, dt)
    uncond = encode_texts(model, [negative]).to(model.device, dt)
    latent = path[0].to(model.device, torch.float64)
    learned = []

    def step(x, eps, i):
        clean = (x - math.sqrt(1 - a_now[i]) * eps) / math.sqrt(a_now[i])
        return math.sqrt(a_prev[i]) * clean + math.sqrt(1 - a_prev[i]) * eps

    with model.run_lock:
        for i, t in enumerate(timesteps):
            _check(cancel, "null-text optimisation")
            x_in = latent.to(dt)
            target = path[i + 1].to(model.device, torch.float64)
            with torch.no_grad():
                eps_c = to_epsilon(model.unet(x_in, t, encoder_hidden_states=cond, return_dict=False)[0].double(),
                                   latent, a_now[i], model.prediction_type)
            emb = uncond.detach().clone().requires_grad_(True)
            optimiser = torch.optim.Adam([emb], lr=lr * (1.0 - i / 100.0) if i < 100 else lr * 0.01)
            for j in range(inner_steps):
                with torch.enable_grad():
                    out = model.unet(x_in, t, encoder_hidden_states=emb, return_dict=False)[0].double()
                    eps_u = to_epsilon(out, latent, a_now[i], model.prediction_type)
                    loss = F.mse_loss(step(latent, eps_u + cfg * (eps_c - eps_u), i), target)
                    # gradients reach the embedding only: nothing accumulates on the (shared) model
                    (grad,) = torch.autograd.grad(loss, [emb])
                emb.grad = grad
                optimiser.step()
                if float(loss.detach()) < 1e-5 + i * 2e-5:
                    break
            with torch.no_grad():
                emb = emb.detach()
                eps_u = to_epsilon(model.unet(x_in, t, encoder_hidden_states=emb, return_dict=False)[0].double(),
                                   latent, a_now[i], model.prediction_type)
                latent = step(latent, eps_u + cfg * (eps_c - eps_u), i)
            learned.append(emb[0])
            uncond = emb
            if on_progress is not None:
                on_progress(i + 1, len(timesteps))
    return torch.stack(learned).cpu()


class NullTextEmbeddings:
    """Embedding edit: the unconditional role reads the optimised embedding of the step (Mokady et al., "Null-text
    Inversion for Editing Real Images using Guided Diffusion Models", 2023). ``per_step`` is ``(steps, tokens,
    dim)`` from :func:`null_text_optimize`; every image of the batch gets the same one."""

    def __init__(self, per_step: torch.Tensor):
        self.per_step = per_step

    def apply(self, step: int, num_steps: int, embeds: torch.Tensor, role: str) -> torch.Tensor:
        if role != "uncond":
            return embeds
        if num_steps != self.per_step.shape[0]:
            raise ValueError(f"null-text embeddings were optimised for {self.per_step.shape[0]} steps, the run "
                             f"has {num_steps}")
        return self.per_step[step].to(embeds.device, embeds.dtype).expand_as(embeds).clone()
