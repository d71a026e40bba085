"""DDIM inversion of a real image (Song et al., "Denoising Diffusion Implicit Models", 2021; as used by
Mokady et al., "Null-text Inversion", 2023): the deterministic DDIM update run backwards, from the image's clean
latents up to x_T, predicting the noise at each level under the prompt without guidance. Sampling DDIM from that x_T
with the same prompt reconstructs the image; edits (another prompt, prompt-to-prompt) then start from it.
"""

from __future__ import annotations

import math

import torch

from studio.engine import CancelToken, Cancelled, make_scheduler
from studio.engine.conditioning import encode_texts
from studio.inspection.trajectory import to_epsilon


@torch.no_grad()
def ddim_invert(model, x0: torch.Tensor, prompt: str, steps: int, *, cancel: CancelToken | None = None) -> torch.Tensor:
    """x_T ``(1, C, h, w)`` (variance-preserving scale, at the first timestep of a ``steps``-step DDIM schedule) whose
    DDIM sampling under ``prompt`` at CFG 1 gives back ``x0`` (up to the inversion's error)."""
    scheduler = make_scheduler(model.scheduler_config, "DDIM")
    scheduler.set_timesteps(steps)
    table = scheduler.alphas_cumprod.double()
    ratio = model.scheduler_config.get("num_train_timesteps", 1000) // steps
    embeds = encode_texts(model, [prompt]).to(model.device, model.dtype)
    latent = x0.to(model.device, torch.float64)
    with model.run_lock:
        for t in reversed(scheduler.timesteps.tolist()):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("inversion cancelled")
            t_prev = t - ratio
            a_prev = float(table[t_prev]) if t_prev >= 0 else float(scheduler.final_alpha_cumprod)
            a_t = float(table[t])
            out = model.unet(latent.to(model.dtype), t, encoder_hidden_states=embeds, return_dict=False)[0].double()
            eps = to_epsilon(out, latent, a_t, model.prediction_type)
            clean = (latent - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            latent = math.sqrt(a_t) * clean + math.sqrt(1 - a_t) * eps
    return latent.to(model.dtype)
